"""The demo's live tab: the microphone streams into one `model.streaming_scorer` per browser session, and the page
shows each window's verdict as soon as its last sample has arrived, a rolling timeline, the running verdict and the
experts that fired in the newest window. The scoring is the model's own stream (the same numbers as the upload tab
once the recording stops); this file only keeps the per-session view and lays out the tab.

Gradio (6.31) sends a streaming microphone as short WAV chunks (`stream_every` seconds of new audio each), decoded
to (rate, int16 samples) or (rate, (samples, channels)); a session's stream starts with its first chunk's rate.
"""

import logging
from collections import deque
from dataclasses import dataclass, field

import gradio as gr
import numpy as np
from figures import expert_usage_figure, timeline_figure


__all__ = ["LiveSession", "build_live_tab", "on_chunk", "on_start", "on_stop"]

logger = logging.getLogger("molex.space.live")
VERDICTS = {"bonafide": "bona fide", "spoof": "spoof", None: "none yet (near-silent)"}
TIMELINE_WINDOWS = 60  # the rolling timeline shows the newest windows (the stream itself keeps every one)
LISTED_WINDOWS = 8  # rows of the window table
CHUNK_SECONDS = 0.5  # how often the browser sends the audio recorded since its last chunk


@dataclass
class LiveSession:
    """One browser session's stream and what its page shows. Lives in a `gr.State`: never shared between sessions.

    Args:
        model: the detector's model (shared; it keeps no state between calls).
        sampling_rate: the microphone's rate, from the first chunk.
    """

    model: object
    sampling_rate: int
    stream: object = field(init=False)
    windows: deque = field(init=False)  # the newest WindowScore objects, for the timeline and the table
    result: object = None  # finish()'s WaveformScore once the recording stopped

    def __post_init__(self):
        self.stream = self.model.streaming_scorer(self.sampling_rate)
        self.windows = deque(maxlen=TIMELINE_WINDOWS)

    def push(self, samples: np.ndarray) -> list:
        """Gradio's (samples,) or (samples, channels) chunk -> the windows it completed."""
        chunk = samples.T if samples.ndim == 2 else samples  # the stream takes (channels, samples)
        completed = self.stream.push(chunk)
        self.windows.extend(completed)
        return completed

    def finish(self):
        """The whole recording's result (as the upload tab would score it), or None for less than 0.1 s."""
        if self.result is None:
            try:
                self.result = self.stream.finish()
            except ValueError as error:
                if type(error).__name__ != "AudioInputError":
                    raise
                return None
        return self.result


def verdict_markdown(session: LiveSession | None) -> str:
    if session is None:
        return "### Running verdict: waiting for audio\nPress Record and speak; each window's verdict appears here."
    heard = f"Heard so far: {session.stream.duration:.1f} s at {session.sampling_rate} Hz"
    if session.result is not None:
        result = session.result
        if result.silent:
            return f"### Final verdict: none (near-silent)\n{heard}; level {result.level_dbfs:.1f} dBFS."
        return (
            f"### Final verdict: {VERDICTS[result.verdict]}\nScore **{result.score:+.4f}** over "
            f"{len(result.window_scores)} windows (the same as uploading the recording).  \n{heard}."
        )
    if not session.windows:
        window = session.stream.window / session.stream.model_rate
        return f"### Running verdict: listening\n{heard}; the first verdict comes after {window:.2f} s."
    last = session.windows[-1]
    return (
        f"### Running verdict: {VERDICTS[last.running_verdict]}\nRunning score **{last.running_score:+.4f}** "
        f"(mean of {last.index + 1} windows).  \n{heard}; {last.channel_policy}."
    )


def windows_markdown(session: LiveSession | None) -> str:
    """The newest windows, newest first, one row each."""
    if session is None or not session.windows:
        return "No window complete yet."
    rows = ["| window | time (s) | score | verdict |", "|---|---|---|---|"]
    for window in list(session.windows)[-LISTED_WINDOWS:][::-1]:
        rows.append(
            f"| window {window.index + 1} | {window.start:.2f}-{window.end:.2f} | {window.score:+.4f} | "
            f"{VERDICTS[window.verdict]} |"
        )
    return "\n".join(rows)


def timeline_and_usage(session: LiveSession):
    windows = list(session.windows)
    window_seconds = windows[-1].end - windows[-1].start
    timeline = timeline_figure(
        [w.start for w in windows],
        [w.score for w in windows],
        window_seconds,
        windows[-1].running_score,
        bool(session.model.config.calibration),
    )
    usage = expert_usage_figure(windows[-1].expert_usage.tolist(), list(session.model.router_names))
    return timeline, usage


def on_chunk(model, chunk, session: LiveSession | None):
    """One streamed chunk -> (session, verdict, window table, timeline, experts); figures only when windows came."""
    if chunk is None:
        return session, gr.skip(), gr.skip(), gr.skip(), gr.skip()
    rate, samples = chunk
    if session is None or session.result is not None or session.sampling_rate != rate:
        session = LiveSession(model, int(rate))  # a new recording (or a changed device): a new stream
    try:
        completed = session.push(np.asarray(samples))
    except ValueError as error:  # a chunk the stream refuses (named in the message); the stream stays usable
        logger.warning("live chunk refused: %s", error)
        raise gr.Error(f"{error}.", print_exception=False) from None
    if not completed:
        return session, verdict_markdown(session), gr.skip(), gr.skip(), gr.skip()
    return session, verdict_markdown(session), windows_markdown(session), *timeline_and_usage(session)


def on_stop(session: LiveSession | None):
    """The recording stopped -> the whole recording's result (the stream's finish())."""
    if session is None:
        return session, verdict_markdown(session), gr.skip(), gr.skip(), gr.skip()
    session.finish()
    outputs = (session, verdict_markdown(session), windows_markdown(session))
    if not session.windows:
        return *outputs, gr.skip(), gr.skip()
    return *outputs, *timeline_and_usage(session)


def on_start(session: LiveSession | None):
    """A new recording: forget the previous one (its stream is dropped with the state)."""
    return None, verdict_markdown(None), windows_markdown(None), None, None


def build_live_tab(model, max_seconds: float) -> None:
    """The tab's components and events, inside the caller's `gr.Blocks` (and `gr.Tab`)."""

    session_state = gr.State(None)
    gr.Markdown(
        "Speak into the microphone: the audio is scored window by window while you speak, and the verdict "
        f"updates as each window completes (recordings up to {max_seconds:g} s)."
    )
    with gr.Row():
        with gr.Column():
            microphone = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Live microphone")
            verdict = gr.Markdown(verdict_markdown(None), elem_id="live-verdict")
            windows = gr.Markdown(windows_markdown(None), elem_id="live-windows")
        with gr.Column():
            timeline = gr.Plot(label="Score per window (newest windows)", elem_id="live-timeline")
            usage = gr.Plot(label="Experts that fired in the newest window", elem_id="live-experts")
    outputs = [session_state, verdict, windows, timeline, usage]
    microphone.start_recording(on_start, inputs=[session_state], outputs=outputs, queue=False)
    microphone.stream(
        lambda chunk, session: on_chunk(model, chunk, session),
        inputs=[microphone, session_state],
        outputs=outputs,
        stream_every=CHUNK_SECONDS,
        time_limit=int(max_seconds),
        concurrency_limit=None,  # sessions stream at once; each holds its own stream, the model is state-free
        show_progress="hidden",
        api_name="live_chunk",
    )
    microphone.stop_recording(on_stop, inputs=[session_state], outputs=outputs, api_name="live_stop")
