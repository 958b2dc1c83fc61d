"""The streaming scorer (`model.streaming_scorer`): chunks of any size give exactly the offline `score_waveform`
result at finish(), each window comes back from the push that completed it, whole-clip decisions (channels, silence)
follow the running statistics, streams never share state, memory does not grow with the stream, and bad chunks are
refused whole with a message naming the chunk."""

import json
import threading
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import FAMILIES, randomize_experts, run_in_fresh_process, tiny_backbone_config
from test_score_waveform import CROP, build_model, speech

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification, streaming
from modeling_molex.novelty import RoutingSignatures
from modeling_molex.scoring import WaveformScore


RATE = 16_000
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model():
    return build_model()


@pytest.fixture(scope="module")
def signatures() -> RoutingSignatures:
    """2 routers x 4 experts, top-2: one signature spread evenly, one on the first two experts of each router."""
    even, first_two = np.full(8, 0.5), np.array([1.0, 1, 0, 0, 1, 1, 0, 0])
    return RoutingSignatures({"A07": even, "bonafide": first_two}, threshold=0.4, top_k=2)


def chunk_sizes(total: int, seed: int, sizes=(0, 1, 2, 7, 160, 999, 2000, 4001, 9000)) -> list[int]:
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < total:
        lengths.append(int(rng.choice(sizes)))
    return lengths


def stream_in_chunks(stream, wave: np.ndarray, lengths: list[int]) -> tuple[WaveformScore, list]:
    """Push `wave` ((samples,) or (channels, samples)) in chunks of `lengths`; check that each window comes back from
    the push whose chunk held its last sample (never before; at the model's rate never later either); return
    finish() and the windows the pushes returned."""
    model_rate, same_rate = stream.model_rate, stream.model_rate == stream.sampling_rate
    windows, position = [], 0
    for length in lengths:
        returned = stream.push(wave[..., position : position + length])
        position += length
        for window in returned:
            assert window.index == len(windows)
            assert round(window.end * model_rate) <= position * model_rate / stream.sampling_rate + 1e-6
            windows.append(window)
        if same_rate:
            complete = (
                0 if position < stream.window else (min(position, wave.shape[-1]) - stream.window) // stream.hop + 1
            )
            assert len(windows) == complete, "a completed window was held back"
    assert position >= wave.shape[-1]
    return stream.finish(), windows


def assert_same_result(streamed: WaveformScore, offline: WaveformScore, tolerance: float = TOLERANCE) -> None:
    for field in ("silent", "verdict", "calibrated", "duration", "sampling_rate", "channels", "channel_policy"):
        assert getattr(streamed, field) == getattr(offline, field), field
    assert streamed.level_dbfs == pytest.approx(offline.level_dbfs, abs=1e-9)
    if offline.silent:
        assert streamed.score is None and streamed.window_scores is None
        return
    assert streamed.score == pytest.approx(offline.score, abs=tolerance)
    assert streamed.bonafide_probability == pytest.approx(offline.bonafide_probability, abs=tolerance)
    assert torch.equal(streamed.window_starts, offline.window_starts)
    np.testing.assert_allclose(streamed.window_scores.numpy(), offline.window_scores.numpy(), atol=tolerance)
    np.testing.assert_allclose(streamed.window_expert_usage.numpy(), offline.window_expert_usage.numpy(), atol=1e-6)
    np.testing.assert_allclose(streamed.expert_usage.numpy(), offline.expert_usage.numpy(), atol=1e-6)
    if offline.novelty is None:
        assert streamed.novelty is None
    else:
        assert streamed.novelty.nearest == offline.novelty.nearest
        assert streamed.novelty.novel == offline.novelty.novel
        assert streamed.novelty.distance == pytest.approx(offline.novelty.distance, abs=1e-6)


# seconds: shorter than one window (repeated), exactly one window, an exact multiple of the hop (no tail window),
# and lengths that need the tail window ending at the clip end.
LENGTHS = {"short": 0.15, "one window": CROP / RATE, "hop multiple": 0.5, "tail": 1.1, "odd tail": 1.2345}


@pytest.mark.parametrize("seconds", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("seed", [0, 1])
def test_random_chunks_give_the_offline_result(model, signatures, seconds, seed):
    wave = speech(seconds, seed=seed + 3)
    offline = model.score_waveform(wave, RATE, signatures=signatures)
    streamed, windows = stream_in_chunks(
        model.streaming_scorer(RATE, signatures=signatures), wave, chunk_sizes(wave.size, seed)
    )
    assert_same_result(streamed, offline)
    assert offline.novelty is not None and 0 < offline.novelty.distance < 1  # a real distance, not a trivial one
    assert len(windows) >= len(offline.window_scores) - 1  # at most the tail window waits for finish()
    for window in windows:
        assert window.score == pytest.approx(float(offline.window_scores[window.index]), abs=TOLERANCE)
        np.testing.assert_allclose(window.expert_usage, offline.window_expert_usage[window.index], atol=1e-6)
        assert window.start == pytest.approx(float(offline.window_starts[window.index]))
        assert window.verdict == ("bonafide" if window.score >= 0 else "spoof")
    if windows:
        last = windows[-1]
        running = float(offline.window_scores[: last.index + 1].double().mean())
        assert last.running_score == pytest.approx(running, abs=TOLERANCE)


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param(lambda n: [1] * n, id="one sample at a time"),
        pytest.param(lambda n: [n], id="one push"),
        pytest.param(lambda n: [CROP // 2] * (n // (CROP // 2) + 1), id="a hop at a time"),
        pytest.param(lambda n: [0, 0] + [CROP + 1] * (n // CROP + 1) + [0], id="windows plus one, and empty pushes"),
    ],
)
def test_regular_chunkings_give_the_offline_result(model, lengths):
    wave = speech(0.6, seed=5)
    streamed, _ = stream_in_chunks(model.streaming_scorer(RATE), wave, lengths(wave.size))
    assert_same_result(streamed, model.score_waveform(wave, RATE))


def family_model(family: str) -> MoLExForAudioClassification:
    torch.manual_seed(2)
    config = MoLExConfig(
        backbone_config=tiny_backbone_config(family),
        adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4),
        crop_samples=CROP,
    )
    model = MoLExForAudioClassification(config).eval()
    randomize_experts(model, std=0.5, seed=3)
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(100.0)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_every_backbone_family_streams_to_its_offline_result(family):
    """With one window per forward pass on both sides the stream computes exactly what offline does (measured: 0.0
    difference, also through the resampler). With the default batches both sides group windows differently, and
    float32 GEMMs of other batch shapes differ in the last bits: the stream is then held to 1e-5, or to twice the
    offline path's own batch_size 1 vs 8 spread where that is larger (the tiny Whisper's 100x head: ~1.2e-5)."""
    model = family_model(family)
    for seconds, rate, seed in [(0.15, RATE, 40), (1.1, RATE, 41), (0.9, 22_050, 42)]:
        wave = speech(seconds, rate=rate, seed=seed)
        one_by_one = model.score_waveform(wave, rate, batch_size=1)
        assert np.ptp(one_by_one.window_scores.numpy()) > 1e-3 or seconds < 0.3  # windows differ: checks can fail
        stream = model.streaming_scorer(rate, batch_size=1)
        streamed, windows = stream_in_chunks(stream, wave, chunk_sizes(wave.size, seed))
        assert_same_result(streamed, one_by_one, tolerance=1e-6)
        for window in windows:
            assert window.score == pytest.approx(float(one_by_one.window_scores[window.index]), abs=1e-6)

        offline = model.score_waveform(wave, rate)
        spread = float((offline.window_scores - one_by_one.window_scores).abs().max())
        streamed, _ = stream_in_chunks(model.streaming_scorer(rate), wave, chunk_sizes(wave.size, seed + 1))
        assert_same_result(streamed, offline, tolerance=max(TOLERANCE, 2 * spread))


def test_options_calibration_hop_and_integer_pcm_match_offline():
    calibrated = build_model(calibration={"scale": 2.0, "bias": -0.5})
    wave = (speech(0.9, seed=6) * 32767).astype(np.int16)
    for options in ({}, {"hop_samples": 1500}, {"hop_samples": 5000}, {"calibrate": False}, {"batch_size": 1}):
        offline = calibrated.score_waveform(wave, RATE, **options)
        streamed, _ = stream_in_chunks(calibrated.streaming_scorer(RATE, **options), wave, chunk_sizes(wave.size, 7))
        assert_same_result(streamed, offline)
        assert streamed.calibrated == ("calibrate" not in options)


def test_stereo_and_opposite_phase_stereo_match_offline(model):
    left, right = speech(0.8, seed=8), speech(0.8, seed=9)
    for stereo, policy in [
        (np.stack([left, right]), "mean of 2 channels"),
        (np.stack([left, -left]), "channel 0 of 2 (the channels cancel when averaged)"),
        (np.stack([0.5 * left, -left]), "channel 1 of 2 (the channels cancel when averaged)"),
    ]:
        offline = model.score_waveform(stereo, RATE)
        streamed, windows = stream_in_chunks(model.streaming_scorer(RATE), stereo, chunk_sizes(stereo.shape[1], 10))
        assert offline.channel_policy == policy
        assert_same_result(streamed, offline)
        assert {window.channel_policy for window in windows} == {policy}


def test_a_channel_policy_that_flips_mid_stream_still_ends_as_offline(model):
    """In phase for 0.5 s, then opposite phase and louder: the early windows are reported under the mean, and
    finish() returns the loudest channel's windows, which the stream scored all along."""
    first, second = speech(0.5, seed=11), 3 * speech(0.7, seed=12)
    stereo = np.concatenate([np.stack([first, first]), np.stack([second, -second])], axis=1)
    offline = model.score_waveform(stereo, RATE)
    assert offline.channel_policy.startswith("channel 0 of 2")
    streamed, windows = stream_in_chunks(model.streaming_scorer(RATE), stereo, [2000] * (stereo.shape[1] // 2000 + 1))
    assert_same_result(streamed, offline)
    assert windows[0].channel_policy == "mean of 2 channels"
    assert windows[-1].channel_policy.startswith("channel 0 of 2")


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_other_rates_are_resampled_as_they_arrive(model, rate):
    wave = speech(1.0, rate=rate, seed=13)
    offline = model.score_waveform(wave, rate)
    streamed, windows = stream_in_chunks(model.streaming_scorer(rate), wave, chunk_sizes(wave.size, 14))
    # soxr's streaming resampler gives the one-shot output to float precision; 1e-5 is the tolerance we state
    assert_same_result(streamed, offline)
    assert len(windows) >= len(offline.window_scores) - 2  # the resampler's delay may hold one more back


def test_silence_gets_no_verdict_until_the_stream_is_loud_enough(model):
    quiet = np.zeros(12_000, np.float32)
    silent_stream = model.streaming_scorer(RATE)
    windows = silent_stream.push(quiet)
    assert windows and all(w.silent and w.verdict is None and w.running_verdict is None for w in windows)
    assert_same_result(silent_stream.finish(), model.score_waveform(quiet, RATE))

    wave = np.concatenate([quiet, speech(1.0, seed=15)])
    streamed, windows = stream_in_chunks(model.streaming_scorer(RATE), wave, [3000] * 10)
    assert windows[0].verdict is None and windows[-1].verdict in ("bonafide", "spoof")
    assert_same_result(streamed, model.score_waveform(wave, RATE))


@pytest.mark.parametrize(
    "case",
    ["dc offset alone", "one click in silence", "speech on a dc offset", "stereo click", "quiet speech at the gate"],
)
def test_silence_gate_and_level_of_a_stream_are_the_offline_ones(model, case):
    """The offline gate counts 20 ms frames with their DC removed and reports the level of the AC part; a stream
    pushed in chunks that split frames (7, 999, ... samples) must decide and report the same."""
    rng = np.random.default_rng(31)
    if case == "dc offset alone":
        wave = np.full(RATE, 0.5, np.float32)
    elif case == "one click in silence":
        wave = np.zeros(RATE, np.float32)
        wave[5_003] = 0.9
    elif case == "speech on a dc offset":
        wave = (speech(1.0, seed=32) + 0.4).astype(np.float32)
    elif case == "stereo click":
        wave = np.zeros((2, RATE), np.float32)
        wave[1, 7_777] = -0.8
    else:  # about -60 dBFS: a frame split between chunks must land on the same side of the threshold
        wave = (rng.standard_normal(RATE) * 10 ** (-60 / 20) * 1.02).astype(np.float32)
    offline = model.score_waveform(wave, RATE)
    streamed, _ = stream_in_chunks(model.streaming_scorer(RATE), wave, chunk_sizes(wave.shape[-1], 33))
    assert_same_result(streamed, offline)
    if case in ("dc offset alone", "one click in silence", "stereo click"):
        assert streamed.silent and streamed.verdict is None
    if case == "speech on a dc offset":
        assert not streamed.silent
        assert streamed.level_dbfs == pytest.approx(model.score_waveform(wave - 0.4, RATE).level_dbfs, abs=1e-3)


def test_absurdly_loud_audio_scores_as_offline(model):
    wave = speech(0.7, seed=16).astype(np.float64) * 1e100  # beyond float32: divided by the peak before the cast
    streamed, _ = stream_in_chunks(model.streaming_scorer(RATE), wave, chunk_sizes(wave.size, 17))
    assert_same_result(streamed, model.score_waveform(wave, RATE), tolerance=1e-4)


# ----------------------------------------------------------------------------------------------- state and threads
def test_two_interleaved_streams_on_one_model_get_their_own_results(model):
    waves = [speech(1.0, seed=18), np.stack([speech(0.7, seed=19), speech(0.7, seed=20)])]
    streams = [model.streaming_scorer(RATE) for _ in waves]
    for position in range(0, 16_000, 700):
        for stream, wave in zip(streams, waves, strict=True):
            stream.push(wave[..., position : position + 700])
    for stream, wave in zip(streams, waves, strict=True):
        assert_same_result(stream.finish(), model.score_waveform(wave, RATE))


def test_four_threads_with_two_streams_each_get_their_offline_results(model):
    waves = {(t, s): speech(0.5 + 0.1 * t + 0.05 * s, seed=30 + 2 * t + s) for t in range(4) for s in range(2)}
    expected = {key: model.score_waveform(wave, RATE) for key, wave in waves.items()}
    results, errors = {}, []
    barrier = threading.Barrier(4)

    def worker(thread: int) -> None:
        try:
            streams = {s: model.streaming_scorer(RATE) for s in range(2)}
            barrier.wait()
            for position in range(0, 16_000, 333):
                for s, stream in streams.items():
                    stream.push(waves[(thread, s)][position : position + 333])
            for s, stream in streams.items():
                results[(thread, s)] = stream.finish()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for key, result in results.items():
        assert_same_result(result, expected[key])
    assert len(results) == 8


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (
            np.r_[np.zeros(50), np.nan, np.inf, np.zeros(10)],
            r"stream chunk 2: 2 samples are NaN or infinite \(first at sample 50\)",
        ),
        (np.zeros((2, 100)), r"stream chunk 2 has 2 channel\(s\) but the stream has 1 \(set by its first chunk\)"),
        (
            np.zeros((1, 2, 100)),
            r"stream chunk 2: expected shape \(samples,\) or \(channels, samples\), got \(1, 2, 100\)",
        ),
        (np.zeros((100, 2)), r"stream chunk 2: a 2-D chunk must be \(channels, samples\) with at most 16 channels"),
        (np.array(["a", "b"]), "stream chunk 2: expected float or integer PCM samples, got dtype <U1"),
        ([[0.1, 0.2], [0.3]], "stream chunk 2: not an array of audio samples"),
        (None, "stream chunk 2: expected float or integer PCM samples, got dtype object"),
        (np.zeros(10, dtype=bool), "stream chunk 2: expected float or integer PCM samples, got dtype bool"),
    ],
    ids=["nan", "channels changed", "3-D", "samples-first", "strings", "ragged", "None", "bool"],
)
def test_a_bad_chunk_is_refused_whole_and_the_stream_goes_on(model, chunk, message):
    wave = speech(0.6, seed=21)
    stream = model.streaming_scorer(RATE)
    stream.push(wave[:5000])
    with pytest.raises(ValueError, match=message):
        stream.push(chunk)
    assert stream.duration == pytest.approx(5000 / RATE)  # nothing of the refused chunk was used
    stream.push(wave[5000:])
    assert_same_result(stream.finish(), model.score_waveform(wave, RATE))


def test_stream_level_errors(model, monkeypatch):
    stream = model.streaming_scorer(RATE)
    stream.push(speech(0.05, seed=22))
    with pytest.raises(ValueError, match=r"stream is 0\.050 s long; at least 0\.1 s of audio is needed"):
        stream.finish()
    stream.push(speech(0.2, seed=23))  # still open after the refused finish()
    result = stream.finish()
    assert stream.finish() is result  # finish() twice: the same result
    with pytest.raises(ValueError, match=r"stream is finished: push\(\) after finish\(\) is refused"):
        stream.push(np.zeros(10))
    with pytest.raises(ValueError, match="call.wav is 0.000 s long"):
        model.streaming_scorer(RATE, name="call.wav").finish()
    with pytest.raises(ValueError, match=r"call.wav: sampling_rate must be a positive integer \(Hz\), got 0"):
        model.streaming_scorer(0, name="call.wav")
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1, got 0"):
        model.streaming_scorer(RATE, batch_size=0)
    with pytest.raises(ValueError, match="`hop_samples` must be an int >= 1, got 0"):
        model.streaming_scorer(RATE, hop_samples=0)
    with pytest.raises(ValueError, match=r"call.wav: sampling_rate is 4000 Hz; at least 8000 Hz is needed"):
        model.streaming_scorer(4_000, name="call.wav")
    loud = np.full((2, 100), np.finfo(np.float32).max, dtype=np.float32)
    with pytest.raises(ValueError, match="stream chunk 1: sample values overflow when mixed"):
        model.streaming_scorer(RATE).push(loud)
    monkeypatch.setattr(streaming, "soxr", None)
    with pytest.raises(ValueError, match=r"resampling 8000 Hz to the model's 16000 Hz needs the `soxr` package"):
        model.streaming_scorer(8_000)
    assert model.streaming_scorer(RATE).push(speech(0.3)) != []  # the model's own rate needs no soxr


# ----------------------------------------------------------------------------------------------- memory
def peak_traced_mb(model, minutes: float, chunk_seconds: float = 0.5) -> tuple[float, WaveformScore]:
    """Peak Python/numpy memory (tracemalloc) while streaming `minutes` of noise in chunks, made on the fly."""
    generator = np.random.default_rng(0)
    stream = model.streaming_scorer(RATE, hop_samples=8 * CROP, signatures=None)  # a window every 2 s: fast
    chunk = int(chunk_seconds * RATE)
    tracemalloc.start()
    try:
        for _ in range(int(minutes * 60 / chunk_seconds)):
            stream.push((0.1 * generator.standard_normal(chunk)).astype(np.float32))
        result = stream.finish()
        return tracemalloc.get_traced_memory()[1] / 2**20, result
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_a_30_minute_stream_holds_no_more_memory_than_a_1_minute_one(model):
    one_minute, short = peak_traced_mb(model, 1)
    thirty_minutes, long = peak_traced_mb(model, 30)
    assert (len(short.window_scores), len(long.window_scores)) == (
        31,
        901,
    )  # every window (and the tail) is in the result
    audio_mb = 30 * 60 * RATE * 4 / 2**20  # what keeping the audio would take: 110 MB
    # measured: 0.32 vs 0.58 MB (the 30 min timeline and result: 901 windows of 2 routers x 4 experts)
    assert thirty_minutes - one_minute < 2.0, (one_minute, thirty_minutes, audio_mb)


# ----------------------------------------------------------------------------------------------- remote code
STREAM_SCRIPT = """
import json, sys
import numpy as np
from transformers import AutoModelForAudioClassification
wave = np.load(sys.argv[1])
results = {}
for folder in sys.argv[2:]:
    model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
    stream = model.streaming_scorer(8000, batch_size=1)
    windows = []
    for start in range(0, wave.size, 1234):
        windows += stream.push(wave[start : start + 1234])
    result = stream.finish()
    results[folder] = {"module": type(stream).__module__, "score": result.score, "windows": len(windows),
                       "offline": model.score_waveform(wave, 8000, batch_size=1).score}
print(json.dumps(results))
"""


@pytest.mark.slow
def test_the_stream_ships_as_remote_code(model, tmp_path):
    wave = speech(1.0, rate=8_000, seed=24)
    np.save(tmp_path / "wave.npy", wave)
    folders = {"wav2vec2": model, "whisper": family_model("whisper")}
    for family, family_instance in folders.items():
        family_instance.save_pretrained(tmp_path / family)
        assert (tmp_path / family / "streaming.py").is_file() and (tmp_path / family / "stream_buffers.py").is_file()
    paths = [str(tmp_path / family) for family in folders]
    run = run_in_fresh_process(STREAM_SCRIPT, [str(tmp_path / "wave.npy"), *paths], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = json.loads(run.stdout.strip().splitlines()[-1])
    for path, (family, family_instance) in zip(paths, folders.items(), strict=True):
        output = outputs[path]
        assert output["module"].startswith("transformers_modules."), family
        assert output["windows"] >= 6, family
        assert output["score"] == pytest.approx(output["offline"], abs=TOLERANCE), family
        expected = family_instance.score_waveform(wave, 8_000, batch_size=1).score
        assert output["score"] == pytest.approx(expected, abs=TOLERANCE), family
