"""The Gradio demo in space_app/: the detector without a server, then the real server through gradio_client."""

import json
import os
import shutil
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from audio_fixtures import write_clip, write_lines
from conftest import randomize_experts

from modeling_molex import MoLExForAudioClassification
from training.encoders import tiny_random as quickstart


SPACE_DIR = Path(__file__).resolve().parent.parent / "space_app"
sys.path.insert(0, str(SPACE_DIR))

import app  # noqa: E402
import detector as detector_module  # noqa: E402
import example_clips  # noqa: E402
import gradio as gr  # noqa: E402
from detector import Detector, InputError, ModelNotFoundError, default_model, window_starts  # noqa: E402
from figures import expert_usage_figure, timeline_figure  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from routing_novelty import (  # noqa: E402
    RoutingSignatures,
    clip_novelty,
    load_routing_signatures,
    routing_novelty,
    signature_distance,
)


CROP = 64_600


# ----------------------------------------------------------------------------------------------- fixtures
def build_space_model(root: Path) -> Path:
    """The main job's model folder, with experts and head made non-trivial so that scores and routing vary."""
    quickstart.main(["--output_dir", str(root), "--num_experts", "4", "--rank", "4"])
    model_dir = root / "model"
    model = MoLExForAudioClassification.from_pretrained(model_dir)
    randomize_experts(model, std=0.5, seed=3)
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(100.0)
    model.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def space_model_dir(tmp_path_factory) -> Path:
    return build_space_model(tmp_path_factory.mktemp("space_model"))


@pytest.fixture(scope="session")
def detector(space_model_dir) -> Detector:
    return Detector(str(space_model_dir))


def speech_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    return quickstart.generated_clip(seconds, rate, seed=seed)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Good clips (16 kHz mono, 8 kHz stereo, 10 s for the timeline) and every kind of bad one."""
    root = tmp_path_factory.mktemp("space_clips")
    paths = {name: root / file for name, file in [
        ("mono16k", "mono16k.wav"), ("stereo8k", "stereo8k.flac"), ("long10s", "long10s.wav"),
        ("short", "short.wav"), ("empty", "empty.wav"), ("zero_frames", "zero_frames.wav"),
        ("text", "notes.wav"), ("nan", "nan.wav"),
    ]}  # fmt: skip
    sf.write(paths["mono16k"], speech_like(2.0, 16_000, seed=1), 16_000)
    left = speech_like(3.0, 8_000, seed=2)
    sf.write(paths["stereo8k"], np.stack([left, 0.5 * left[::-1]], axis=1), 8_000)
    sf.write(paths["long10s"], np.concatenate([speech_like(5.0, 16_000, s) for s in (3, 4)]), 16_000)
    sf.write(paths["short"], speech_like(0.05, 16_000, seed=5), 16_000)
    paths["empty"].write_bytes(b"")
    sf.write(paths["zero_frames"], np.zeros(0, dtype=np.float32), 16_000)
    paths["text"].write_text("these are meeting notes, not audio\n")
    sf.write(paths["nan"], np.full(8000, np.nan, dtype=np.float32), 16_000, subtype="FLOAT")
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------------------------- windows
def test_window_starts_cover_the_clip_and_end_at_its_end():
    assert window_starts(1000, 1000, 500) == [0]
    assert window_starts(10, 1000, 500) == [0]
    assert window_starts(2000, 1000, 500) == [0, 500, 1000]
    starts = window_starts(2100, 1000, 500)
    assert starts == [0, 500, 1000, 1100]
    covered = np.zeros(2100, bool)
    for start in starts:
        covered[start : start + 1000] = True
    assert covered.all()


# ----------------------------------------------------------------------------------------------- detector
def score_waveform(model_dir: Path, wave: np.ndarray) -> torch.Tensor:
    """Reference: the model's own feature extractor and forward on one window, no demo code involved."""
    model = MoLExForAudioClassification.from_pretrained(model_dir).eval()
    inputs = model.feature_extractor()(wave, sampling_rate=16_000, return_tensors="pt")
    with torch.inference_mode():
        return model.detection_score(model(**inputs).logits)[0]


def test_short_clip_is_one_repeated_window_scored_like_the_model(detector, space_model_dir, clips):
    result = detector.predict(clips["mono16k"])
    wave, _ = sf.read(clips["mono16k"], dtype="float32")
    expected = score_waveform(space_model_dir, np.resize(wave, CROP))
    assert result.window_starts_s == [0.0] and len(result.window_scores) == 1
    assert result.score == pytest.approx(float(expected), abs=1e-5)
    assert result.verdict == ("bona fide" if result.score >= 0 else "spoof")
    assert result.probabilities["bonafide"] == pytest.approx(1 / (1 + np.exp(-result.score)), abs=1e-6)
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert (result.duration_s, result.file_sampling_rate, result.channels) == (2.0, 16_000, 1)
    usage = np.asarray(result.expert_usage)
    assert usage.shape == (len(detector.router_names), 4)
    np.testing.assert_allclose(usage.sum(axis=1), 2.0)  # top-2 routing: two experts fire per router
    assert not result.calibrated and result.novelty is None


def test_stereo_8k_is_downmixed_and_resampled(detector, space_model_dir, clips):
    result = detector.predict(clips["stereo8k"])
    data, rate = sf.read(clips["stereo8k"], dtype="float32")
    wave = soxr.resample(data.mean(axis=1), rate, 16_000, quality="HQ").astype(np.float32)
    assert (result.file_sampling_rate, result.channels) == (8_000, 2)
    assert result.duration_s == pytest.approx(3.0)
    expected = score_waveform(space_model_dir, np.resize(wave, CROP))
    assert result.score == pytest.approx(float(expected), abs=1e-4)


def test_long_clip_scores_each_window_and_averages(detector, clips, tmp_path):
    result = detector.predict(clips["long10s"])
    wave, _ = sf.read(clips["long10s"], dtype="float32")
    starts = window_starts(wave.size, CROP, CROP // 2)
    assert len(starts) == 4
    assert result.window_starts_s == pytest.approx([s / 16_000 for s in starts])
    assert result.score == pytest.approx(float(np.mean(result.window_scores)), abs=1e-5)
    assert np.ptp(result.window_scores) > 1e-4  # windows really differ, so the next check can fail
    for start, window_score in zip(starts, result.window_scores, strict=True):
        sf.write(tmp_path / "window.wav", wave[start : start + CROP], 16_000, subtype="FLOAT")
        assert detector.predict(tmp_path / "window.wav").score == pytest.approx(window_score, abs=1e-5)


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (None, "No audio"),
        ("short", "short.wav is 0.050 s long; at least 0.1 s"),
        ("empty", "empty.wav is empty"),
        ("zero_frames", "zero_frames.wav holds no audio samples"),
        ("text", "notes.wav is not an audio file"),
        ("nan", "nan.wav contains invalid"),
    ],
)
def test_bad_input_raises_a_message_for_the_user(detector, clips, clip, message):
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        detector.predict(clips[clip] if clip else None)


def test_missing_file_and_too_long_clip_are_refused(space_model_dir, detector, clips, tmp_path):
    with pytest.raises(InputError, match="gone.wav: file not found"):
        detector.predict(tmp_path / "gone.wav")
    strict = Detector(str(space_model_dir), max_seconds=5.0)
    with pytest.raises(InputError, match=r"long10s\.wav is 10\.0 s long; this demo scores clips of up to 5 s"):
        strict.predict(clips["long10s"])
    assert strict.predict(clips["mono16k"]).score == pytest.approx(detector.predict(clips["mono16k"]).score)


def test_calibrated_model_reports_the_llr(space_model_dir, detector, clips, tmp_path):
    calibrated_dir = tmp_path / "calibrated"
    shutil.copytree(space_model_dir, calibrated_dir)
    config = json.loads((calibrated_dir / "config.json").read_text())
    config["calibration"] = {"scale": 2.0, "bias": -0.5}
    (calibrated_dir / "config.json").write_text(json.dumps(config))
    raw = detector.predict(clips["long10s"])
    llr = Detector(str(calibrated_dir)).predict(clips["long10s"])
    assert llr.calibrated
    assert llr.score == pytest.approx(2.0 * raw.score - 0.5, abs=1e-4)
    assert llr.window_scores == pytest.approx([2.0 * s - 0.5 for s in raw.window_scores], abs=1e-4)
    assert llr.probabilities["bonafide"] == pytest.approx(1 / (1 + np.exp(-llr.score)), abs=1e-6)
    assert "a calibrated log-likelihood ratio" in app.summary_markdown(llr)
    assert "uncalibrated" in app.summary_markdown(raw)


# ----------------------------------------------------------------------------------------------- model discovery
def test_default_model_prefers_env_then_main_then_quickstart(tmp_path, monkeypatch):
    monkeypatch.delenv("MOLEX_MODEL", raising=False)
    monkeypatch.setattr(detector_module, "REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="MOLEX_MODEL"):
        default_model()
    for relative in ("outputs/quickstart/model", "outputs/main/model"):
        (tmp_path / relative).mkdir(parents=True)
        (tmp_path / relative / "config.json").write_text("{}")
        assert default_model() == str(tmp_path / relative)
    monkeypatch.setenv("MOLEX_MODEL", "someone/molex-xlsr")
    assert default_model() == "someone/molex-xlsr"


def test_app_exits_with_a_clear_error_when_no_model_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MOLEX_MODEL", raising=False)
    monkeypatch.setattr(detector_module, "REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="set MOLEX_MODEL"):
        app.main([])


# ----------------------------------------------------------------------------------------------- novelty
def write_signatures(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_routing_novelty_finds_the_nearest_signature_on_a_0_to_1_scale():
    # 2 routers x 2 experts, top-1: each usage row sums to 1, so the largest L1 distance is 2 * 1 * 2 = 4.
    signatures = RoutingSignatures({"A01": np.array([1.0, 0, 0, 1]), "A07": np.array([0, 1.0, 1, 0])}, threshold=0.3)
    close = routing_novelty(np.array([[0.0, 1.0], [0.75, 0.25]]), signatures, top_k=1)
    assert (close.nearest, close.distance, close.novel) == ("A07", pytest.approx(0.5 / 4), False)
    middle = routing_novelty(np.array([[0.5, 0.5], [0.5, 0.5]]), signatures, top_k=1)
    assert middle.novel and middle.distance == pytest.approx(0.5)
    assert signature_distance(np.array([[1.0, 0], [0, 1]]), [0, 1, 1, 0], top_k=1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="6 values but the routing signatures have 4"):
        routing_novelty(np.zeros((2, 3)), signatures, top_k=1)


def test_clip_novelty_averages_window_distances_not_window_usages():
    # Two windows routed to opposite known classes: each window sits exactly on a signature (distance 0), while
    # their averaged usage would sit halfway between (0.25): the clip must read as known, as each window does.
    signatures = RoutingSignatures({"A01": np.array([1.0, 0, 0, 1]), "A07": np.array([0, 1.0, 1, 0])}, threshold=0.2)
    windows = np.array([[[1.0, 0], [0, 1]], [[0, 1.0], [1, 0]], [[1.0, 0], [0, 1]]])
    result = clip_novelty(windows, signatures, top_k=1)
    assert (result.nearest, result.distance, result.novel) == ("A01", 0.0, False)
    assert routing_novelty(windows.mean(0), signatures, top_k=1).distance > 0.2


def test_novelty_distance_matches_the_analysis_script():
    from training.analysis.analyze_experts import novelty_scores

    rng = np.random.default_rng(0)
    usage = rng.dirichlet(np.ones(4), size=(5, 3)) * 2  # 5 clips, 3 routers, 4 experts, top-2
    centroids = {f"A{i:02d}": rng.dirichlet(np.ones(4), size=3).reshape(-1) * 2 for i in range(3)}
    expected = novelty_scores(usage, np.stack(list(centroids.values())), top_k=2)
    signatures = RoutingSignatures(centroids, threshold=0.2)
    ours = [routing_novelty(clip, signatures, top_k=2).distance for clip in usage]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "cannot read routing signatures"),
        ({"known": {}, "threshold": 1.0}, "'known' must be a non-empty object"),
        ({"known": {"A01": [1, 0]}}, "'threshold' must be a finite number"),
        ({"known": {"A01": [1, 0]}, "threshold": "high"}, "'threshold' must be a finite number"),
        ({"known": {"A01": [1, "x"]}, "threshold": 1}, r"known\['A01'\] must be a non-empty list"),
        ({"known": {"A01": [1, 0], "A02": [1]}, "threshold": 1}, "differ in length"),
        ({"known": {"A01": [1, 0]}, "threshold": 1, "top_k": 0}, "'top_k' must be a positive integer"),
        ({"known": {"A01": [1, 0]}, "threshold": 1, "router_names": "layer_0"}, "'router_names' must be a list"),
    ],
)
def test_malformed_signatures_name_the_file_and_field(tmp_path, payload, message):
    path = write_signatures(tmp_path / "routing_signatures.json", payload)
    with pytest.raises(ValueError, match=message) as error:
        load_routing_signatures(path)
    assert str(path) in str(error.value)


def test_detector_uses_signatures_shipped_with_the_model(space_model_dir, detector, clips, tmp_path):
    model_dir = tmp_path / "with_signatures"
    shutil.copytree(space_model_dir, model_dir)
    usage = np.asarray(detector.predict(clips["mono16k"]).expert_usage).reshape(-1)
    disjoint = (1.0 - usage).tolist()  # top-2 of 4 experts: the other two in every router
    header = {"distance": "L1 / (2 * top_k * routers)", "top_k": 2, "router_names": ["layer_0", "layer_1"]}

    def signatures(**fields):
        write_signatures(model_dir / "routing_signatures.json", {**header, **fields})
        return Detector(str(model_dir))

    novelty = (
        signatures(known={"A07": usage.tolist(), "A10": disjoint}, threshold=0.2).predict(clips["mono16k"]).novelty
    )
    assert (novelty.nearest, novelty.distance, novelty.novel) == ("A07", pytest.approx(0.0, abs=1e-6), False)
    result = signatures(known={"A10": disjoint}, threshold=0.2).predict(clips["mono16k"])
    assert (result.novelty.nearest, result.novelty.distance, result.novelty.novel) == ("A10", pytest.approx(1.0), True)
    assert "possibly a novel attack" in app.novelty_markdown(result)
    assert json.loads(json.dumps(result.to_dict()))["novelty"]["nearest"] == "A10"
    with pytest.raises(ValueError, match="signatures have 3 values but this model has 2 routers x 4 experts"):
        signatures(known={"A10": [0.5] * 3}, threshold=0.2)
    with pytest.raises(ValueError, match="top_k is 1 but this model routes to top_k=2"):
        signatures(known={"A10": disjoint}, threshold=0.2, top_k=1)
    with pytest.raises(ValueError, match="router_names"):
        signatures(known={"A10": disjoint}, threshold=0.2, router_names=["block_0", "block_1"])


# ----------------------------------------------------------------------------------------------- examples, figures
def test_example_clips_come_from_the_protocol(tmp_path):
    eval_lines = [
        "E_1 E_0000000001 F C05 2 E_0000000002 AC1 A11 spoof -",  # coded copy: skipped
        "E_1 E_0000000002 F - - - AC1 A11 spoof -",
        "E_2 E_0000000003 M - - - - bonafide bonafide -",
        "a malformed line",
        "E_2 E_0000000004 M - - - AC2 A12 spoof -",
        "E_2 E_0000000005 M - - - AC2 A12 spoof -",  # second clip of A12: skipped
        "E_3 E_0000000006 F - - - - bonafide bonafide -",
        "E_3 E_0000000007 F - - - - bonafide bonafide -",  # third bona fide: skipped
        "E_3 E_0000000008 F - - - AC3 A13 spoof -",  # audio missing: skipped
        "E_3 E_0000000009 F - - - AC3 A14 spoof -",
        "E_3 E_0000000010 F - - - AC3 A15 spoof -",  # a fourth attack: skipped
    ]
    write_lines(tmp_path / "ASVspoof5_protocols" / "ASVspoof5.eval.track_1.tsv", eval_lines)
    for number in [1, 2, 3, 4, 5, 6, 7, 9, 10]:
        write_clip(tmp_path / "flac_E_eval" / f"E_{number:010d}.flac", 0.3)
    chosen = example_clips.example_clips(tmp_path)
    assert [(Path(c.path).stem, c.label) for c in chosen] == [
        ("E_0000000003", "bona fide"),
        ("E_0000000006", "bona fide"),
        ("E_0000000002", "spoof (A11)"),
        ("E_0000000004", "spoof (A12)"),
        ("E_0000000009", "spoof (A14)"),
    ]


def test_examples_from_a_plain_folder_or_none(tmp_path, monkeypatch):
    write_clip(tmp_path / "b_fake.wav", 0.3)
    write_clip(tmp_path / "a_real.flac", 0.3)
    (tmp_path / "readme.txt").write_text("not audio")
    assert [c.label for c in example_clips.example_clips(tmp_path)] == ["a_real", "b_fake"]
    assert example_clips.example_clips(None) == []
    monkeypatch.setenv("MOLEX_EXAMPLES_DIR", str(tmp_path / "absent"))
    assert example_clips.find_examples_dir() is None
    monkeypatch.setenv("MOLEX_EXAMPLES_DIR", str(tmp_path))
    assert example_clips.find_examples_dir() == tmp_path


def test_figures_show_the_numbers_they_are_given():
    usage = [[0.0, 1.0, 0.25], [1.0, 0.0, 0.75]]
    heatmap = expert_usage_figure(usage, ["layer_0", "layer_1"])
    np.testing.assert_allclose(heatmap.axes[0].images[0].get_array(), usage)
    assert [t.get_text() for t in heatmap.axes[0].get_yticklabels()] == ["layer_0", "layer_1"]
    timeline = timeline_figure([0.0, 2.0, 4.0], [0.5, -1.0, 0.2], 4.0, -0.1, calibrated=False)
    points = timeline.axes[0].collections[-1].get_offsets()
    np.testing.assert_allclose(points, [[2.0, 0.5], [4.0, -1.0], [6.0, 0.2]])
    assert timeline.axes[0].get_ylabel() == "score (uncalibrated)"


# ----------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(detector):
    demo = app.build_demo(detector)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server, verbose=False)


def assert_same_numbers(api_output, expected):
    label, summary, timeline, usage_plot, novelty, details = api_output
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert label["label"] == expected.verdict
    assert confidences["bona fide"] == pytest.approx(expected.probabilities["bonafide"], abs=1e-6)
    assert confidences["spoof"] == pytest.approx(expected.probabilities["spoof"], abs=1e-6)
    assert f"Verdict: {expected.verdict}" in summary and f"{expected.score:+.4f}" in summary
    assert details["score"] == pytest.approx(expected.score, abs=1e-6)
    assert details["window_scores"] == pytest.approx(expected.window_scores, abs=1e-6)
    np.testing.assert_allclose(details["expert_usage"], expected.expert_usage, atol=1e-6)
    assert usage_plot["type"] == "matplotlib" and usage_plot["plot"].startswith("data:image/")
    assert "not available for this model" in novelty
    return timeline


def test_api_returns_the_detector_numbers(client, detector, clips):
    for name in ("mono16k", "stereo8k"):
        timeline = assert_same_numbers(client.predict(handle_file(clips[name]), api_name="/classify"),
                                       detector.predict(clips[name]))  # fmt: skip
        assert timeline["value"] is None and not timeline["visible"]
    timeline = assert_same_numbers(
        client.predict(handle_file(clips["long10s"]), api_name="/classify"), detector.predict(clips["long10s"])
    )
    assert timeline["visible"] and timeline["value"]["plot"].startswith("data:image/")


def test_bad_requests_get_a_message_and_the_server_keeps_serving(client, detector, clips):
    for clip, message in [(None, "No audio"), ("text", "is not an audio file"), ("short", "at least 0.1 s"),
                          ("empty", "is empty")]:  # fmt: skip
        with pytest.raises(AppError, match=message) as error:
            client.predict(handle_file(clips[clip]) if clip else None, api_name="/classify")
        assert "Traceback" not in str(error.value)
    good = client.predict(handle_file(clips["mono16k"]), api_name="/classify")
    assert good[-1]["score"] == pytest.approx(detector.predict(clips["mono16k"]).score, abs=1e-6)


def test_twenty_concurrent_requests_all_succeed(client, detector, clips):
    names = ["mono16k", "stereo8k"] * 10
    expected = {name: detector.predict(clips[name]).score for name in set(names)}
    with ThreadPoolExecutor(max_workers=20) as pool:
        outputs = list(pool.map(lambda n: client.predict(handle_file(clips[n]), api_name="/classify"), names))
    assert len(outputs) == 20
    for name, output in zip(names, outputs, strict=True):
        assert output[-1]["score"] == pytest.approx(expected[name], abs=1e-6)


# ----------------------------------------------------------------------------------------------- the Space itself
def test_space_folder_is_a_valid_gradio_space():
    readme = (SPACE_DIR / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("---\n")
    header = dict(
        line.split(":", 1) for line in readme.split("---\n")[1].splitlines() if ":" in line and not line[0].isspace()
    )
    header = {key.strip(): value.strip().strip('"') for key, value in header.items()}
    assert header["sdk"] == "gradio" and header["sdk_version"] == gr.__version__
    assert (SPACE_DIR / header["app_file"]).is_file()
    requirements = (SPACE_DIR / "requirements.txt").read_text().splitlines()
    names = {line.split("==")[0].split(">=")[0].strip().lower() for line in requirements if line and line[0].isalpha()}
    assert {"torch", "transformers", "soundfile", "soxr", "matplotlib", "numpy", "gradio"} <= names
    import transformers

    assert f"transformers=={transformers.__version__}" in requirements
    assert f"gradio=={gr.__version__}" in requirements
    assert os.access(SPACE_DIR / "app.py", os.R_OK)
