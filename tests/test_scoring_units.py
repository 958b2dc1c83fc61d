"""`modeling_molex.scoring` piece by piece (issue 19, item 10): the verdict and P(bona fide) at their edges, the
result's fields and its JSON form, window positions, rate checks, the errors and what they name, and the model
methods that wrap `score_waveforms` (score_file, streaming_scorer, routing_signatures, the pipeline and handler
classes). One tiny wav2vec2 model; the scoring path end to end is in test_score_waveform.py."""

import json
import math
import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from test_score_waveform import CROP, build_model

from modeling_molex import MoLExForAudioClassification, scoring
from modeling_molex import audio_io as scoring_audio_io
from modeling_molex.audio_io import AudioInputError
from modeling_molex.finite_checks import NonFiniteScoreError
from modeling_molex.novelty import NoveltyResult
from modeling_molex.scoring import (
    WaveformScore,
    bonafide_probability,
    check_sampling_rate,
    clip_result,
    verdict,
    window_starts,
)


RATE = 16_000


@pytest.fixture(scope="module")
def model() -> MoLExForAudioClassification:
    return build_model()


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# ----- verdict and probability --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, "bonafide"), (1e-12, "bonafide"), (-1e-12, "spoof"), (-3.0, "spoof"), (5, "bonafide")],
)
def test_the_verdict_is_bonafide_from_zero_up(score, expected):
    assert verdict(score) == expected


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, 0.5), (2.0, 1 / (1 + math.exp(-2.0))), (-2.0, 1 / (1 + math.exp(2.0))), (800.0, 1.0),
     (-699.0, 1 / (1 + math.exp(699.0))), (-700.0, 0.0), (-700.5, 0.0), (-1e6, 0.0)],
)  # fmt: skip
def test_bonafide_probability_is_the_sigmoid_without_overflow(score, expected):
    assert bonafide_probability(score) == expected


def test_the_probability_and_the_verdict_of_a_clip_agree_with_its_score(model):
    waves = [speech(0.5, seed=i) for i in range(6)]
    middle = float(np.median([r.score for r in model.score_waveforms(waves, RATE)]))
    results = build_model(calibration={"scale": 1.0, "bias": -middle}).score_waveforms(waves, RATE)
    assert {r.verdict for r in results} == {"bonafide", "spoof"}  # both verdicts occur, so both are checked
    for result in results:
        assert result.verdict == ("bonafide" if result.score >= 0 else "spoof")
        assert result.bonafide_probability == pytest.approx(1 / (1 + math.exp(-result.score)), rel=1e-12)


# ----- windows and rates --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "expected"),
    [(10, [0]), (100, [0]), (101, [0, 1]), (149, [0, 49]), (150, [0, 50]), (160, [0, 50, 60]), (200, [0, 50, 100])],
)
def test_windows_start_every_hop_and_the_last_one_ends_at_the_clip_end(samples, expected):
    assert window_starts(samples, 100, 50) == expected


@pytest.mark.parametrize("rate", [16_000, np.int64(8_000), np.int32(44_100)])
def test_a_sampling_rate_is_a_python_int_from_8_khz(rate):
    checked = check_sampling_rate(rate, "clip.wav")
    assert checked == int(rate) and type(checked) is int


@pytest.mark.parametrize("rate", [16_000.0, True, 0, -16_000, "16000", None])
def test_a_sampling_rate_that_is_not_a_positive_integer_is_refused_naming_the_input(rate):
    with pytest.raises(AudioInputError) as refused:
        check_sampling_rate(rate, "clip.wav")
    assert str(refused.value) == f"clip.wav: sampling_rate must be a positive integer (Hz), got {rate!r}"


def test_a_rate_below_8_khz_is_refused_saying_why():
    with pytest.raises(AudioInputError) as refused:
        check_sampling_rate(7_999, "clip.wav")
    assert str(refused.value) == (
        "clip.wav: sampling_rate is 7999 Hz; at least 8000 Hz is needed (below it the speech band is gone)"
    )
    assert check_sampling_rate(8_000, "clip.wav") == 8_000


def test_one_rate_for_all_or_one_per_clip_and_names_for_errors(model):
    waves = [speech(0.3, seed=1), speech(0.3, seed=2)]
    shared = model.score_waveforms(waves, np.int64(RATE))
    assert [r.sampling_rate for r in shared] == [RATE, RATE]
    with pytest.raises(ValueError, match=r"^got 2 waves, 1 sampling rates and 2 names$"):
        model.score_waveforms(waves, [RATE])
    with pytest.raises(ValueError, match=r"^got 2 waves, 2 sampling rates and 1 names$"):
        model.score_waveforms(waves, RATE, names=["a.wav"])
    broken = speech(0.3)
    broken[5] = np.nan
    with pytest.raises(AudioInputError, match=r"^wave\[1\]: 1 samples are NaN"):
        model.score_waveforms([waves[0], broken], RATE)


def test_hop_samples_sets_the_window_positions(model):
    result = model.score_waveform(speech(0.5), RATE, hop_samples=1_000)
    assert result.window_starts.tolist() == [s / RATE for s in window_starts(8_000, CROP, 1_000)]
    assert len(result.window_scores) == 5


def test_sample_values_that_overflow_when_mixed_are_refused_naming_the_clip(model):
    huge = np.full((2, RATE), 1.7e308)  # finite, but their sum (the channel average) is not
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(AudioInputError) as refused:
        model.score_waveforms([huge], RATE, names=["loud.wav"])
    assert str(refused.value) == (
        "loud.wav: sample values overflow when mixed or resampled (|x| near float32's limit)"
    )


def test_a_resampling_error_names_the_clip(model, monkeypatch):
    monkeypatch.setattr(scoring_audio_io, "soxr", None)
    with pytest.raises(AudioInputError, match=r"^phone\.wav: resampling 8000 Hz to the model's 16000 Hz needs"):
        model.score_waveforms([speech(0.5)], 8_000, names=["phone.wav"])


def test_windows_reach_the_model_as_float32_whatever_the_input_precision(model, monkeypatch):
    """float64 audio is cast once, before windowing: 4 bytes per sample of audio held, not 8."""
    seen = []
    real = scoring.score_window_batch

    def recording(model, windows):
        seen.append(windows.dtype)
        return real(model, windows)

    monkeypatch.setattr(scoring, "score_window_batch", recording)
    wave = speech(0.6, seed=7).astype(np.float64)
    result = model.score_waveform(wave, RATE)
    assert seen == [torch.float32] and result.score is not None


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the silence gate's variance: inf, loud
def test_audio_whose_negative_peak_is_absurd_scores_like_it_at_normal_level(model):
    """The peak is the largest |x|: a rectified clip of values near -1e300 is brought into float32's range too."""
    wave = -np.abs(speech(0.5, seed=8)).astype(np.float64)
    normal = model.score_waveform(wave, RATE).score
    assert model.score_waveform(wave * 1e300, RATE).score == pytest.approx(normal, abs=1e-3)


# ----- the result ---------------------------------------------------------------------------------------------------


def test_the_result_carries_the_window_layout_and_the_clip_fields(model):
    result = model.score_waveform(np.stack([speech(0.6, seed=3), speech(0.6, seed=4)]), RATE)
    assert result.window_seconds == CROP / RATE == 0.25
    assert result.window_starts.dtype == torch.float64
    assert result.window_starts.tolist() == [s / RATE for s in window_starts(9_600, CROP, CROP // 2)]
    assert result.window_scores.dtype == torch.float32 and result.window_expert_usage.shape == (4, 2, 4)
    torch.testing.assert_close(result.expert_usage, result.window_expert_usage.mean(dim=0))
    assert result.router_names == list(model.router_names) and len(result.router_names) == 2
    assert (result.duration, result.sampling_rate, result.channels) == (0.6, RATE, 2)
    assert result.silent is False and result.calibrated is False


def test_a_silent_clip_gets_the_clip_fields_only(model):
    result = model.score_waveform(np.zeros(8_000, np.float32), RATE)
    assert result.silent and result.score is None and result.window_scores is None and result.novelty is None
    assert result.window_seconds == 0.25 and result.duration == 0.5 and result.router_names == list(model.router_names)


def test_a_window_mean_that_overflows_is_an_error_naming_the_clip(model):
    scores = torch.tensor([1e308, 1e308], dtype=torch.float64)
    usage = torch.zeros(2, 2, 4)
    with pytest.raises(NonFiniteScoreError) as refused:
        clip_result(model, scores, usage, [0, 2_000], silent=False, calibrated=True, level=-20.0, duration=0.4,
                    rate=RATE, channels=1, channel_policy="mono", signatures=None, name="clip.wav")  # fmt: skip
    assert str(refused.value) == "clip.wav: the mean of the window scores is not finite (inf); no verdict"
    with pytest.raises(NonFiniteScoreError, match=r"^wave: the mean"):  # the default name
        clip_result(model, scores, usage, [0, 2_000], silent=False, calibrated=True, level=-20.0, duration=0.4,
                    rate=RATE, channels=1, channel_policy="mono", signatures=None)  # fmt: skip


def test_to_dict_gives_every_field_as_plain_json_values():
    novelty = NoveltyResult(nearest="A07", distance=0.25, threshold=0.2, novel=True, signatures="extended")
    result = WaveformScore(
        score=1.5,
        bonafide_probability=0.8,
        verdict="bonafide",
        silent=False,
        calibrated=True,
        level_dbfs=-20.0,
        window_starts=torch.tensor([0.0, 0.125], dtype=torch.float64),
        window_seconds=0.25,
        window_scores=torch.tensor([1.0, 2.0]),
        expert_usage=torch.tensor([[0.5, 1.5]]),
        window_expert_usage=torch.tensor([[[0.0, 2.0]], [[1.0, 1.0]]]),
        router_names=["layer_0"],
        novelty=novelty,
        duration=0.375,
        sampling_rate=8_000,
        channels=2,
        channel_policy="mean of 2 channels",
    )
    assert result.to_dict() == {
        "score": 1.5,
        "bonafide_probability": 0.8,
        "verdict": "bonafide",
        "silent": False,
        "calibrated": True,
        "level_dbfs": -20.0,
        "window_starts": [0.0, 0.125],
        "window_seconds": 0.25,
        "window_scores": [1.0, 2.0],
        "expert_usage": [[0.5, 1.5]],
        "window_expert_usage": [[[0.0, 2.0]], [[1.0, 1.0]]],
        "router_names": ["layer_0"],
        "novelty": {"nearest": "A07", "distance": 0.25, "threshold": 0.2, "novel": True},
        "duration": 0.375,
        "sampling_rate": 8_000,
        "channels": 2,
        "channel_policy": "mean of 2 channels",
    }
    json.dumps(result.to_dict())  # JSON-ready: no tensor, no dataclass left


def test_to_dict_of_a_silent_result_keeps_every_field(model):
    out = model.score_waveform(np.zeros(8_000, np.float32), RATE).to_dict()
    assert list(out) == list(WaveformScore.__dataclass_fields__)
    assert out["score"] is None and out["novelty"] is None and out["window_scores"] is None and out["silent"] is True
    assert json.loads(json.dumps(out, allow_nan=True))["level_dbfs"] == -math.inf


# ----- the model's methods ------------------------------------------------------------------------------------------


def test_score_file_names_the_file_and_passes_the_options_on(model, tmp_path):
    wave = speech(0.5, seed=5)
    sf.write(tmp_path / "clip.wav", wave, RATE, subtype="FLOAT")
    expected = model.score_waveform(wave, RATE, hop_samples=1_000)
    result = model.score_file(tmp_path / "clip.wav", hop_samples=1_000)
    assert len(result.window_scores) == len(expected.window_scores) == 5
    assert result.score == pytest.approx(expected.score, abs=1e-6)
    broken = wave.copy()
    broken[9] = np.inf
    sf.write(tmp_path / "broken.wav", broken, RATE, subtype="FLOAT")
    with pytest.raises(AudioInputError, match=r"^broken\.wav: 1 samples are NaN or infinite \(first at sample 9\)"):
        model.score_file(tmp_path / "broken.wav")


def test_running_out_of_memory_in_score_file_says_how_long_the_file_is(model, tmp_path, monkeypatch):
    sf.write(tmp_path / "long.wav", speech(2.0), RATE)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(scoring, "score_waveforms", out_of_memory)
    with pytest.raises(AudioInputError) as refused:
        model.score_file(tmp_path / "long.wav", max_seconds=30)
    assert str(refused.value) == (
        "long.wav: scoring it needs more memory than is free (2.0 s at 16000 Hz; lower max_seconds, now 30)"
    )


def test_streaming_scorer_is_a_stream_of_this_model_at_the_given_rate_with_the_options(model):
    wave = speech(0.8, seed=6)
    stream = model.streaming_scorer(8_000, hop_samples=1_000)
    for position in range(0, wave.size, 900):
        stream.push(wave[position : position + 900])
    result = stream.finish()
    expected = model.score_waveform(wave, 8_000, hop_samples=1_000)
    assert result.sampling_rate == 8_000 and result.duration == pytest.approx(0.8 * RATE / 8_000)
    assert len(result.window_scores) == len(expected.window_scores)
    assert result.score == pytest.approx(expected.score, abs=1e-4)


def test_routing_signatures_are_the_model_folders(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    reloaded = MoLExForAudioClassification.from_pretrained(tmp_path / "model").eval()
    assert reloaded.routing_signatures() is None
    usage = [0.5] * 8
    (tmp_path / "model" / "routing_signatures.json").write_text(
        json.dumps({"known": {"A07": usage}, "threshold": 0.3, "top_k": 2})
    )
    signatures = reloaded.routing_signatures()
    assert signatures is not None and signatures.threshold == 0.3 and list(signatures.known) == ["A07"]


def write_signatures(folder, top_k: int = 2) -> None:
    (folder / "routing_signatures.json").write_text(
        json.dumps({"known": {"A07": [0.5] * 8, "bonafide": [0.25] * 8}, "threshold": 0.3, "top_k": top_k})
    )


@pytest.fixture
def saved(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_signatures_are_read_once_per_file_version(saved, monkeypatch):
    reads = []
    real = scoring._read_signatures_file

    def counting(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(scoring, "_read_signatures_file", counting)
    reloaded = MoLExForAudioClassification.from_pretrained(saved).eval()
    write_signatures(saved)
    first = reloaded.routing_signatures()
    assert reloaded.routing_signatures() is first and len(reads) == 1  # cached
    write_signatures(saved, top_k=1)
    path = str(saved / "routing_signatures.json")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))  # a newer version
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: top_k is 1 but this model routes to top_k=2"):
        reloaded.routing_signatures()
    assert len(reads) == 2


def test_the_signatures_cache_is_per_model_layout(saved):
    write_signatures(saved)
    assert MoLExForAudioClassification.from_pretrained(saved).routing_signatures() is not None
    other = MoLExForAudioClassification.from_pretrained(saved)
    other.config.adapter.top_k = 1  # another layout, same file version: checked afresh, never served from the cache
    with pytest.raises(ValueError, match="top_k is 2 but this model routes to top_k=1"):
        other.routing_signatures()


def test_signatures_are_checked_against_the_models_expert_packs(saved):
    usage = {"known": {"A07": [0.5] * 8}, "threshold": 0.3, "top_k": 2}
    path = saved / "routing_signatures.json"
    path.write_text(json.dumps({**usage, "expert_packs": {"other": 4}}))  # as many values, other experts
    reloaded = MoLExForAudioClassification.from_pretrained(saved)
    with pytest.raises(
        ValueError,
        match=rf"^{re.escape(str(path))}: `expert_packs` {{'other': 4}} are not the first packs of this model "
        r"\({'base': 4}\); these signatures were derived for other experts$",
    ):
        reloaded.routing_signatures()
    path.write_text(json.dumps({**usage, "expert_packs": {"base": 4}}))
    reloaded.add_experts(2, "new")  # signatures of the first pack, extended with zero columns for the new one
    signatures = reloaded.routing_signatures()
    assert signatures.expert_packs == {"base": 4, "new": 2} and signatures.extended_experts == ("expert_4", "expert_5")
    np.testing.assert_array_equal(signatures.known["A07"], [0.5] * 4 + [0.0] * 2 + [0.5] * 4 + [0.0] * 2)


def test_a_model_from_nowhere_looks_nothing_up_and_a_hub_model_finds_its_file(model, saved, monkeypatch):
    import transformers.utils

    calls = []

    def cached_file(repo, filename, **kwargs):
        calls.append((repo, filename, kwargs))
        if repo == "org/offline":
            raise OSError("offline")
        return str(saved / filename) if repo == "org/model" else None

    monkeypatch.setattr(transformers.utils, "cached_file", cached_file)
    assert model.name_or_path == "" and model.routing_signatures() is None and calls == []
    write_signatures(saved)
    hub = MoLExForAudioClassification.from_pretrained(saved)
    for repo, found in (("org/model", True), ("org/other", False), ("org/offline", False)):
        hub.name_or_path = repo
        assert (hub.routing_signatures() is not None) == found
    assert calls == [(repo, "routing_signatures.json", {"_raise_exceptions_for_missing_entries": False})
                     for repo in ("org/model", "org/other", "org/offline")]  # fmt: skip


def test_the_pipeline_and_handler_classes_are_the_shipped_ones(model):
    from modeling_molex.handler import EndpointHandler
    from modeling_molex.pipeline_molex import MoLExAudioClassificationPipeline

    assert model.pipeline_class() is MoLExAudioClassificationPipeline
    assert model.endpoint_handler_class() is EndpointHandler
