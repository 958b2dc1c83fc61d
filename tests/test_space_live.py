"""The demo's Live tab without a browser (space_app/live.py): Gradio's streamed chunks, as the microphone component
hands them over ((rate, int16 (samples,) or (samples, channels))), go into one stream per session; the page's text
follows the windows, and stopping gives the upload tab's result. The browser test is in test_space_browser.py."""

import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from test_space_app import build_space_model

from training.encoders.tiny_random import generated_clip


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "space_app"))

import live  # noqa: E402
from detector import Detector  # noqa: E402


RATE = 48_000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return Detector(str(build_space_model(tmp_path_factory.mktemp("live_model")))).model


def as_gradio_chunks(wave: np.ndarray, seconds: float = live.CHUNK_SECONDS) -> list[tuple[int, np.ndarray]]:
    """float (samples,) or (channels, samples) -> gradio's int16 chunks, (samples,) or (samples, channels)."""
    pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
    pcm = pcm.T if pcm.ndim == 2 else pcm
    step = int(seconds * RATE)
    return [(RATE, pcm[start : start + step]) for start in range(0, len(pcm), step)]


def stream_session(model, chunks, session=None):
    updates = []
    for chunk in chunks:
        session, *outputs = live.on_chunk(model, chunk, session)
        updates.append(outputs)
    return session, updates


def test_a_recording_streams_window_by_window_and_stops_with_the_upload_result(model):
    stereo = np.stack([generated_clip(9.0, RATE, seed=1), 0.5 * generated_clip(9.0, RATE, seed=2)])
    chunks = as_gradio_chunks(stereo)
    session, updates = stream_session(model, chunks)
    window_seconds = model.config.crop_samples / model.config.sampling_rate
    first = next(i for i, (_, table, _, _) in enumerate(updates) if table != gr.skip())
    assert (first + 1) * live.CHUNK_SECONDS == pytest.approx(np.ceil(window_seconds / live.CHUNK_SECONDS) * 0.5)
    assert "window 1 | 0.00-4.04" in updates[first][1]
    assert updates[first][0].startswith("### Running verdict: ")
    assert all(figure == gr.skip() for _, _, figure, _ in updates[:first])  # no redraw without a new window
    assert session.windows[-1].index + 1 == len(session.windows) == 3  # windows at 0, 2.02 and 4.04 s in 9 s

    session, verdict, table, timeline, usage = live.on_stop(session)
    pcm = np.concatenate([samples for _, samples in chunks]).T
    expected = model.score_waveform(pcm, RATE)
    assert session.result.score == pytest.approx(expected.score, abs=1e-5)
    assert session.result.channel_policy == expected.channel_policy == "mean of 2 channels"
    assert f"Final verdict: {live.VERDICTS[expected.verdict]}" in verdict and f"{expected.score:+.4f}" in verdict
    assert timeline is not None and usage is not None


def test_sessions_are_their_own_and_a_new_recording_or_rate_starts_a_new_stream(model):
    speech, silence = generated_clip(5.0, RATE, seed=3), np.zeros(5 * RATE)
    speaking, quiet = None, None
    for speech_chunk, silent_chunk in zip(as_gradio_chunks(speech), as_gradio_chunks(silence), strict=True):
        speaking, *_ = live.on_chunk(model, speech_chunk, speaking)
        quiet, *_ = live.on_chunk(model, silent_chunk, quiet)
    assert speaking is not quiet and speaking.stream is not quiet.stream
    assert speaking.windows[-1].verdict in ("bonafide", "spoof") and quiet.windows[-1].verdict is None
    assert "Running verdict: none yet (near-silent)" in live.verdict_markdown(quiet)

    live.on_stop(speaking)
    again, *_ = live.on_chunk(model, as_gradio_chunks(speech)[0], speaking)  # after stop: a new stream
    assert again is not speaking and again.stream.duration == pytest.approx(0.5)
    resampled, *_ = live.on_chunk(model, (16_000, np.zeros(800, np.int16)), again)  # another device rate
    assert resampled is not again and resampled.sampling_rate == 16_000
    assert live.on_start(again)[0] is None


def test_a_refused_chunk_shows_the_streams_message_and_the_stream_goes_on(model):
    session, _ = stream_session(model, as_gradio_chunks(generated_clip(1.0, RATE, seed=4)))
    with pytest.raises(gr.Error, match=r"stream chunk 3 has 2 channel\(s\) but the stream has 1"):
        live.on_chunk(model, (RATE, np.zeros((100, 2), np.int16)), session)
    assert live.on_chunk(model, (RATE, np.zeros(100, np.int16)), session)[0] is session
    assert session.stream.duration == pytest.approx(1.0 + 100 / RATE)
    assert live.on_stop(live.on_start(session)[0])[0] is None  # stop before any audio: nothing to finish
    short, _ = stream_session(model, [(RATE, np.zeros(100, np.int16))])
    assert short.finish() is None and "Heard so far: 0.0 s" in live.verdict_markdown(short)
