"""The model's one scoring path (`score_waveform`): windows, channels, rates, silence, calibration, novelty, and the
`pipeline("audio-classification")` that ships with the model and calls it."""

import json
import shutil

import numpy as np
import pytest
import soxr
import torch
from conftest import randomize_experts, run_in_fresh_process, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification, audio_io
from modeling_molex.scoring import window_starts


CROP = 4_000  # a short training crop keeps these tests fast; windows of 0.25 s


def build_model(calibration=None) -> MoLExForAudioClassification:
    torch.manual_seed(0)
    config = MoLExConfig(
        backbone_config=tiny_backbone_config("wav2vec2"),
        adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4),
        crop_samples=CROP,
        calibration=calibration,
    )
    model = MoLExForAudioClassification(config).eval()
    randomize_experts(model, std=0.5, seed=1)
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(100.0)  # spread the scores so that differences show
    return model


@pytest.fixture(scope="module")
def model() -> MoLExForAudioClassification:
    return build_model()


def speech(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * np.sin(t))) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def reference_window_score(model, window: np.ndarray) -> float:
    """One window through the model's own feature extractor and forward: no scoring code involved."""
    inputs = model.feature_extractor()(window, sampling_rate=16_000, return_tensors="pt")
    with torch.inference_mode():
        return float(model.detection_score(model(**inputs).logits)[0])


def test_long_input_is_scored_in_windows_whose_mean_is_the_clip_score(model):
    wave = speech(1.1, seed=3)
    result = model.score_waveform(wave, 16_000)
    starts = window_starts(wave.size, CROP, CROP // 2)
    assert starts[-1] == wave.size - CROP and len(starts) == len(result.window_scores) == 8
    np.testing.assert_allclose(result.window_starts.numpy(), np.array(starts) / 16_000)
    assert np.ptp(result.window_scores.numpy()) > 1e-3  # windows differ, so the next check can fail
    for start, window_score in zip(starts, result.window_scores.tolist(), strict=True):
        assert window_score == pytest.approx(reference_window_score(model, wave[start : start + CROP]), abs=1e-4)
    assert result.score == pytest.approx(float(result.window_scores.double().mean()), abs=1e-6)
    assert result.bonafide_probability == pytest.approx(1 / (1 + np.exp(-result.score)))
    assert result.verdict == ("bonafide" if result.score >= 0 else "spoof")
    assert result.expert_usage.shape == (2, 4) and result.window_expert_usage.shape == (8, 2, 4)
    np.testing.assert_allclose(result.expert_usage.sum(-1).numpy(), 2.0, atol=1e-5)  # top-2 per router
    assert result.novelty is None and not result.silent and result.channel_policy == "mono"


def test_a_short_clip_is_repeated_to_one_window(model):
    wave = speech(0.15, seed=4)
    result = model.score_waveform(wave, 16_000)
    assert result.window_starts.tolist() == [0.0]
    assert result.score == pytest.approx(reference_window_score(model, np.resize(wave, CROP)), abs=1e-4)


def test_scores_do_not_depend_on_batching_or_clip_company(model):
    waves = [speech(s, seed=i) for i, s in enumerate((0.3, 0.9, 0.2, 0.6))]
    alone = [model.score_waveform(w, 16_000).score for w in waves]
    for batch_size in (1, 3, 16):
        together = [r.score for r in model.score_waveforms(waves, 16_000, batch_size=batch_size)]
        np.testing.assert_allclose(together, alone, atol=1e-5)


def test_other_rates_are_resampled_with_soxr(model):
    wave = speech(0.5, rate=8_000, seed=5)
    expected = model.score_waveform(soxr.resample(wave.astype(np.float64), 8_000, 16_000, quality="HQ"), 16_000)
    result = model.score_waveform(wave, 8_000)
    assert result.sampling_rate == 8_000 and result.duration == pytest.approx(0.5)
    assert result.score == pytest.approx(expected.score, abs=1e-5)


def test_missing_soxr_is_a_clear_error_naming_the_package(model, monkeypatch):
    monkeypatch.setattr(audio_io, "soxr", None)
    with pytest.raises(ValueError, match=r"needs the `soxr` package \(pip install soxr\)"):
        model.score_waveform(speech(0.5, rate=8_000), 8_000)
    assert model.score_waveform(speech(0.5), 16_000).score is not None  # the model's own rate needs no soxr


def test_stereo_is_averaged_but_opposite_phase_stereo_is_not_cancelled(model):
    left, right = speech(0.5, seed=6), speech(0.5, seed=7)
    both = model.score_waveform(np.stack([left, right], axis=1), 16_000)  # (samples, channels) works too
    assert both.channel_policy == "mean of 2 channels" and both.channels == 2
    assert both.score == pytest.approx(model.score_waveform((left + right) / 2, 16_000).score, abs=1e-5)
    cancelled = model.score_waveform(np.stack([left, -left]), 16_000)
    assert not cancelled.silent and cancelled.channel_policy.startswith("channel 0 of 2")
    assert cancelled.score == pytest.approx(model.score_waveform(left, 16_000).score, abs=1e-5)


def test_non_finite_samples_are_refused_and_silence_gets_no_verdict(model):
    wave = speech(0.5)
    wave[100] = np.nan
    with pytest.raises(ValueError, match=r"1 samples are NaN or infinite \(first at sample 100\)"):
        model.score_waveform(wave, 16_000)
    with pytest.raises(ValueError, match="clip.wav: 2 samples are NaN or infinite"):
        model.score_waveforms([np.r_[np.inf, -np.inf, np.zeros(7998)]], 16_000, names=["clip.wav"])
    silent = model.score_waveform(np.zeros(16_000, np.float32), 16_000)
    assert silent.silent and silent.score is None and silent.verdict is None and silent.level_dbfs == -np.inf
    hiss = model.score_waveform(1e-5 * speech(0.5), 16_000)
    assert hiss.silent and hiss.level_dbfs < -60
    scored = model.score_waveform(np.zeros(16_000, np.float32), 16_000, flag_silence=False)
    assert scored.score is not None and not scored.silent
    with pytest.raises(ValueError, match="at least 0.1 s"):
        model.score_waveform(speech(0.05), 16_000)


def test_absurdly_loud_audio_scores_like_the_same_audio_at_normal_level(model):
    wave = speech(0.5, seed=8)
    normal = model.score_waveform(wave, 16_000).score
    assert model.score_waveform(wave.astype(np.float64) * 1e29, 16_000).score == pytest.approx(normal, abs=1e-4)
    assert model.score_waveform((wave * 32767).astype(np.int16), 16_000).score == pytest.approx(normal, abs=1e-3)


def test_the_stored_calibration_is_applied(model):
    calibrated = build_model(calibration={"scale": 2.0, "bias": -0.5})
    wave = speech(0.8, seed=9)
    raw, llr = model.score_waveform(wave, 16_000), calibrated.score_waveform(wave, 16_000)
    assert llr.calibrated and not raw.calibrated
    assert llr.score == pytest.approx(2.0 * raw.score - 0.5, abs=1e-5)
    np.testing.assert_allclose(llr.window_scores.numpy(), 2.0 * raw.window_scores.numpy() - 0.5, atol=1e-5)
    assert calibrated.score_waveform(wave, 16_000, calibrate=False).score == pytest.approx(raw.score, abs=1e-6)


def test_novelty_comes_from_the_signatures_shipped_with_the_model(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    reloaded = MoLExForAudioClassification.from_pretrained(tmp_path / "model").eval()
    wave = speech(0.2, seed=10)  # one window
    usage = reloaded.score_waveform(wave, 16_000).expert_usage.reshape(-1).tolist()
    signatures = {"known": {"A07": usage, "A10": [1.0 - u for u in usage]}, "threshold": 0.2, "top_k": 2}
    (tmp_path / "model" / "routing_signatures.json").write_text(json.dumps(signatures))
    novelty = reloaded.score_waveform(wave, 16_000).novelty
    assert (novelty.nearest, novelty.novel) == ("A07", False) and novelty.distance == pytest.approx(0.0, abs=1e-6)
    (tmp_path / "model" / "routing_signatures.json").write_text(json.dumps({**signatures, "top_k": 1}))
    with pytest.raises(ValueError, match="top_k is 1 but this model routes to top_k=2"):
        reloaded.score_waveform(wave, 16_000)


PIPELINE_SCRIPT = """
import json, sys
import numpy as np
from transformers import pipeline
classify = pipeline("audio-classification", model=sys.argv[1], trust_remote_code=True)
wave = np.load(sys.argv[2])
by_array = classify({"array": wave, "sampling_rate": 8000})
by_file = classify(sys.argv[3], return_details=True)
print(json.dumps({"array": by_array, "file": by_file[:2], "windows": len(by_file[2]["details"].window_scores),
                  "class": type(classify).__name__}))
"""


@pytest.mark.slow
def test_pipeline_from_a_fresh_process_scores_long_input_in_windows(model, tmp_path):
    import soundfile as sf

    model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["custom_pipelines"]
    wave = speech(1.0, rate=8_000, seed=11)
    np.save(tmp_path / "wave.npy", wave)
    sf.write(tmp_path / "clip.flac", wave, 8_000, subtype="PCM_24")
    run = run_in_fresh_process(
        PIPELINE_SCRIPT, [str(tmp_path / "model"), str(tmp_path / "wave.npy"), str(tmp_path / "clip.flac")], tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    output = json.loads(run.stdout.strip().splitlines()[-1])
    expected = model.score_waveform(wave, 8_000)
    assert output["class"] == "MoLExAudioClassificationPipeline" and output["windows"] == len(expected.window_scores)
    for key in ("array", "file"):
        scores = {row["label"]: row["score"] for row in output[key]}
        assert scores["bonafide"] == pytest.approx(expected.bonafide_probability, abs=1e-5)
        assert scores["spoof"] == pytest.approx(1 - expected.bonafide_probability, abs=1e-5)
    shutil.rmtree(tmp_path / "model")


def test_a_pipeline_built_from_a_model_object_uses_the_same_path(model):
    from transformers import pipeline

    # transformers reads `custom_pipelines` only for repo ids: a model object needs `pipeline_class` spelled out.
    classify = pipeline(
        "audio-classification",
        model=model,
        feature_extractor=model.feature_extractor(),
        pipeline_class=model.pipeline_class(),
    )
    wave = speech(0.9, seed=12)
    scores = {row["label"]: row["score"] for row in classify(wave)}
    assert scores["bonafide"] == pytest.approx(model.score_waveform(wave, 16_000).bonafide_probability, abs=1e-9)
    silent = np.zeros(16_000, np.float32)
    with pytest.raises(ValueError, match="near-silent"):
        classify(silent)
