"""`pipeline("audio-classification")` for MoLEx, in this process (so that mutation testing sees it): every input
form the pipeline accepts scores exactly like `score_waveform` on the same audio, the output rows and their order,
`top_k` / `return_details` / `window_batch_size`, and the errors for input there is no verdict for."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from test_score_waveform import build_model, speech
from transformers import pipeline

from modeling_molex import MoLExForAudioClassification
from modeling_molex.audio_io import AudioInputError


@pytest.fixture(scope="module")
def model() -> MoLExForAudioClassification:
    return build_model()


@pytest.fixture(scope="module")
def classify(model):
    return pipeline(
        "audio-classification",
        model=model,
        feature_extractor=model.feature_extractor(),
        pipeline_class=model.pipeline_class(),
    )


def probabilities(rows: list[dict]) -> dict[str, float]:
    return {row["label"]: row["score"] for row in rows}


def assert_scored_like(rows: list[dict], expected) -> None:
    """Both labels, highest first, P(bona fide) = the model's own, P(spoof) its complement."""
    assert [row["label"] for row in rows] == sorted(
        ("bonafide", "spoof"), key=lambda label: -probabilities(rows)[label]
    )
    scores = probabilities(rows)
    assert scores["bonafide"] == pytest.approx(expected.bonafide_probability, abs=1e-9)
    assert scores["spoof"] == pytest.approx(1.0 - expected.bonafide_probability, abs=1e-9)


def test_files_and_their_bytes_are_decoded_like_score_file(model, classify, tmp_path):
    wave = speech(0.7, rate=8_000, seed=1)
    path = tmp_path / "clip.wav"
    sf.write(path, wave, 8_000, subtype="FLOAT")
    expected = model.score_file(path)
    assert expected.window_scores.numel() > 1  # several windows: the pipeline must not score one forward
    for source in (str(path), path, path.read_bytes()):
        assert_scored_like(classify(source), expected)


@pytest.mark.parametrize("seed", [2, 5])
def test_arrays_and_tensors_are_at_the_models_rate_and_dicts_at_their_own(model, classify, seed):
    wave = speech(0.6, seed=seed)
    at_model_rate = model.score_waveform(wave, 16_000)
    assert_scored_like(classify(wave), at_model_rate)
    assert_scored_like(classify(torch.from_numpy(wave)), at_model_rate)
    slow = speech(0.6, rate=8_000, seed=seed)
    resampled = model.score_waveform(slow, 8_000)
    assert resampled.bonafide_probability != pytest.approx(model.score_waveform(slow, 16_000).bonafide_probability)
    assert_scored_like(classify({"array": slow, "sampling_rate": 8_000}), resampled)
    assert_scored_like(classify({"raw": slow, "sampling_rate": np.int64(8_000)}), resampled)
    # "raw" wins over "array", as in transformers' own audio pipelines
    assert_scored_like(classify({"raw": slow, "array": wave, "sampling_rate": 8_000}), resampled)


def test_the_rows_are_ordered_by_probability_and_top_k_keeps_the_first(model, classify):
    verdicts = set()
    for seed in range(6):
        wave = (0.1 * np.random.default_rng(seed).standard_normal(4_800)).astype(np.float32)  # both verdicts here
        rows = classify(wave)
        assert len(rows) == 2 and rows[0]["score"] >= rows[1]["score"]
        assert rows[0]["score"] + rows[1]["score"] == pytest.approx(1.0)
        assert classify(wave, top_k=1) == rows[:1]
        assert classify(wave, top_k=5) == rows  # more than there are labels: all of them
        verdicts.add(rows[0]["label"])
        expected = model.score_waveform(wave, 16_000)
        assert rows[0]["label"] == expected.verdict
    assert verdicts == {"bonafide", "spoof"}, "the model should give both verdicts on these clips"


def test_return_details_adds_the_models_whole_result(model, classify):
    wave = speech(0.9, seed=7)
    rows = classify(wave, return_details=True)
    expected = model.score_waveform(wave, 16_000)
    assert len(rows) == 3 and set(rows[2]) == {"details"}
    details = rows[2]["details"]
    assert details.score == pytest.approx(expected.score, abs=1e-9)
    torch.testing.assert_close(details.window_scores, expected.window_scores)
    torch.testing.assert_close(details.window_expert_usage, expected.window_expert_usage)
    assert rows[:2] == classify(wave)
    assert len(classify(wave, top_k=1, return_details=True)) == 2


def test_window_batch_size_reaches_the_scoring_path(model, classify, monkeypatch):
    seen = []
    score_waveform = model.score_waveform

    def recording(*args, **kwargs):
        seen.append(kwargs["batch_size"])
        return score_waveform(*args, **kwargs)

    monkeypatch.setattr(model, "score_waveform", recording)
    wave = speech(0.9, seed=8)
    default = classify(wave)
    by_three = classify(wave, window_batch_size=3)
    assert probabilities(by_three) == pytest.approx(probabilities(default), abs=1e-6)  # batching changes no score
    assert seen == [8, 3]


def test_function_to_apply_other_than_sigmoid_is_refused(classify):
    wave = speech(0.3, seed=9)
    assert classify(wave, function_to_apply="sigmoid") == classify(wave)
    for other in ("softmax", "none"):
        with pytest.raises(ValueError, match="`function_to_apply` must be unset"):
            classify(wave, function_to_apply=other)


def near_silence(samples: int) -> np.ndarray:
    return (1e-7 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32)


def test_near_silent_input_gets_no_verdict_and_the_error_names_the_input(classify, tmp_path):
    quiet = near_silence(16_000)
    path = tmp_path / "quiet.wav"
    sf.write(path, quiet, 16_000, subtype="FLOAT")
    cases = [
        (str(path), r"^quiet\.wav is near-silent \(-1\d\d\.\d dBFS\): there is no speech to judge$"),
        (path.read_bytes(), r"^bytes input is near-silent \(-1\d\d\.\d dBFS\)"),
        ({"array": quiet, "sampling_rate": 16_000}, r"^array input is near-silent"),
        (quiet, r"^array input is near-silent"),
    ]
    for source, message in cases:
        with pytest.raises(AudioInputError, match=message):
            classify(source)


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ({"array": np.zeros(10)}, ValueError, r'a dict input needs "array" \(or "raw"\) and "sampling_rate"'),
        ({"sampling_rate": 16_000}, ValueError, r'a dict input needs "array" \(or "raw"\) and "sampling_rate"'),
        ({"wave": np.zeros(10), "sampling_rate": 16_000}, ValueError, r'a dict input needs "array"'),
        (
            3.5,
            TypeError,
            r"^expected a file path, bytes, an array or a dict with 'array' and 'sampling_rate', got float$",
        ),
        (object(), TypeError, r"got object$"),
        # never fetched: no download from inside a scoring call
        ("https://example.com/clip.wav", TypeError, r"got str$"),
        ("http://example.com/clip.wav", TypeError, r"got str$"),
    ],
)
def test_inputs_the_pipeline_cannot_read_are_clear_errors(classify, source, error, message):
    with pytest.raises(error, match=message):
        classify(source)


def test_a_file_that_is_not_audio_is_an_error_naming_it(classify, tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("not audio")
    with pytest.raises(ValueError, match="notes.wav"):
        classify(str(path))
    buffer = io.BytesIO()
    sf.write(buffer, speech(0.3, seed=4), 16_000, format="WAV", subtype="PCM_16")
    assert classify(buffer.getvalue())[0]["label"] in ("bonafide", "spoof")


def test_the_saved_config_names_this_pipeline_for_the_hub_loader(model, tmp_path):
    """What the slow fresh-process test relies on: `config.json` points transformers at this class and the file that
    holds it is saved beside the weights (remote code)."""
    model.save_pretrained(tmp_path / "model")
    entry = json.loads((tmp_path / "model" / "config.json").read_text())["custom_pipelines"]["audio-classification"]
    module, _, name = entry["impl"].partition(".")
    assert (tmp_path / "model" / f"{module}.py").is_file()
    assert name == model.pipeline_class().__name__ == "MoLExAudioClassificationPipeline"
    assert entry["pt"] == ["AutoModelForAudioClassification"]


def test_errors_from_the_scoring_path_name_the_input(classify, tmp_path):
    short = speech(0.01, seed=3)
    path = tmp_path / "short.wav"
    sf.write(path, short, 16_000, subtype="FLOAT")
    cases = [
        (str(path), r"^short\.wav is 0\.010 s long"),
        (path.read_bytes(), r"^bytes input is 0\.010 s long"),
        (short, r"^array input is 0\.010 s long"),
        ({"array": speech(0.5), "sampling_rate": 2_000}, r"^array input: sampling_rate is 2000 Hz"),
    ]
    for source, message in cases:
        with pytest.raises(AudioInputError, match=message):
            classify(source)
