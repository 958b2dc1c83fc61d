"""The Gradio demo in space_app/: UI around the model's own `score_file`, then the real server through
gradio_client (numbers equal the model's, bad input gets a message, only example clips are served)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import write_clip, write_lines
from conftest import randomize_experts, run_in_fresh_process

from modeling_molex import MoLExAdapterConfig, MoLExForAudioClassification
from modeling_molex.novelty import (
    RoutingSignatures,
    clip_novelty,
    load_routing_signatures,
    routing_novelty,
    signature_distance,
)
from training.encoders.tiny_random import build_tiny_backbone, generated_clip


SPACE_DIR = Path(__file__).resolve().parent.parent / "space_app"
sys.path.insert(0, str(SPACE_DIR))

import app  # noqa: E402
import detector as detector_module  # noqa: E402
import example_clips  # noqa: E402
import gradio as gr  # noqa: E402
from detector import Detector, InputError, ModelNotFoundError, default_model  # noqa: E402
from figures import expert_usage_figure, timeline_figure  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


# ----------------------------------------------------------------------------------------------- fixtures
def build_space_model(root: Path) -> Path:
    """A main-job-like model folder (tiny random backbone), with experts and head made non-trivial so that scores
    and routing vary."""
    torch.manual_seed(0)
    backbone = build_tiny_backbone(str(root / "tiny_backbone"), seed=0)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4, lora_alpha=8)
    model = MoLExForAudioClassification.from_backbone(backbone, adapter=adapter)
    randomize_experts(model, std=0.5, seed=3)
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(100.0)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def space_model_dir(tmp_path_factory) -> Path:
    return build_space_model(tmp_path_factory.mktemp("space_model"))


@pytest.fixture(scope="session")
def detector(space_model_dir) -> Detector:
    return Detector(str(space_model_dir))


def speech_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    return generated_clip(seconds, rate, seed=seed)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Good clips (16 kHz mono, 8 kHz stereo, 10 s for the timeline, a browser WebM) and every kind of bad one."""
    root = tmp_path_factory.mktemp("space_clips")
    paths = {name: root / file for name, file in [
        ("mono16k", "mono16k.wav"), ("stereo8k", "stereo8k.flac"), ("long10s", "long10s.wav"),
        ("short", "short.wav"), ("empty", "empty.wav"), ("zero_frames", "zero_frames.wav"),
        ("text", "notes.wav"), ("nan", "nan.wav"), ("silent", "silent.wav"), ("webm", "recording.webm"),
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
    sf.write(paths["silent"], np.zeros(16_000, dtype=np.int16), 16_000)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(paths["mono16k"]), "-c:a", "libopus", str(paths["webm"])],
                   check=True)  # fmt: skip
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------------------------- detector
def test_the_demo_gives_the_models_own_numbers(detector, space_model_dir, clips):
    model = MoLExForAudioClassification.from_pretrained(space_model_dir).eval()
    for name in ("mono16k", "stereo8k", "long10s", "webm"):
        result = detector.predict(clips[name])
        expected = model.score_file(clips[name])
        assert result.score == pytest.approx(expected.score, abs=1e-6)
        assert result.window_scores.tolist() == pytest.approx(expected.window_scores.tolist(), abs=1e-6)
    stereo = detector.predict(clips["stereo8k"])
    assert (stereo.sampling_rate, stereo.channels, stereo.channel_policy) == (8_000, 2, "mean of 2 channels")
    assert len(detector.predict(clips["long10s"]).window_scores) == 4
    assert detector.predict(clips["webm"]).duration == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (None, "No audio"),
        ("short", "short.wav is 0.050 s long; at least 0.1 s"),
        ("empty", "empty.wav is empty"),
        ("zero_frames", "zero_frames.wav: holds no audio samples"),
        ("text", "notes.wav is not an audio file"),
        ("nan", "nan.wav: 8000 samples are NaN or infinite"),
    ],
)
def test_bad_input_raises_a_message_for_the_user(detector, clips, clip, message):
    with pytest.raises(InputError, match=message.replace(".", r"\.")) as error:
        detector.predict(clips[clip] if clip else None)
    assert str(clips["text"].parent) not in str(error.value)  # no server paths in messages


def test_missing_file_and_too_long_clip_are_refused(space_model_dir, detector, clips, tmp_path):
    with pytest.raises(InputError, match="gone.wav: file not found"):
        detector.predict(tmp_path / "gone.wav")
    strict = Detector(str(space_model_dir), max_seconds=5.0)
    with pytest.raises(InputError, match=r"long10s\.wav is 10\.0 s long \(by its header\); at most 5 s"):
        strict.predict(clips["long10s"])
    assert strict.predict(clips["mono16k"]).score == pytest.approx(detector.predict(clips["mono16k"]).score)


def test_a_three_hour_upload_is_refused_from_its_header_in_bounded_memory(detector, tmp_path):
    """Issue 19: one 4 MB Opus upload of 3 h silence took the server from 0.66 to 2.6 GB before being refused."""
    import tracemalloc

    from audio_bombs import three_hour_opus

    upload = three_hour_opus(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(
            InputError, match=r"^three_hours\.opus is 10800\.0 s long \(by its header\); at most 120 s"
        ):
            detector.predict(upload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_the_demos_limit_must_be_a_finite_positive_number(space_model_dir, value):
    with pytest.raises(ValueError, match=r"max_seconds must be a finite number > 0"):
        Detector(str(space_model_dir), max_seconds=value)


def test_silence_gets_no_verdict(detector, clips):
    result = detector.predict(clips["silent"])
    assert result.silent and result.verdict is None and result.score is None
    assert "near-silent" in app.summary_markdown(result)


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
    assert "a calibrated log-likelihood ratio" in app.summary_markdown(llr)
    assert "uncalibrated" in app.summary_markdown(raw)


# ----------------------------------------------------------------------------------------------- model discovery
def test_default_model_prefers_env_then_the_main_jobs_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MOLEX_MODEL", raising=False)
    monkeypatch.setattr(detector_module, "REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="MOLEX_MODEL"):
        default_model()
    (tmp_path / "outputs/main/model").mkdir(parents=True)
    (tmp_path / "outputs/main/model/config.json").write_text("{}")
    assert default_model() == str(tmp_path / "outputs/main/model")
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
    usage = detector.predict(clips["mono16k"]).expert_usage.reshape(-1).numpy()
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
def served(detector, tmp_path_factory):
    """The demo as `app.main` launches it: example clips from a corpus whose eval protocol holds the labels."""
    corpus = tmp_path_factory.mktemp("corpus")
    write_lines(corpus / "ASVspoof5.eval.track_1.tsv", ["E_1 E_0000000001 F - - - - bonafide bonafide -"])
    write_clip(corpus / "flac_E_eval" / "E_0000000001.flac", 0.5)
    examples = app.serve_examples(example_clips.example_clips(corpus), tmp_path_factory.mktemp("served"))
    demo = app.build_demo(detector, examples)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[clip.path for clip in examples])  # fmt: skip
    yield {"url": f"http://127.0.0.1:{port}/", "corpus": corpus, "examples": examples}
    demo.close()


@pytest.fixture(scope="module")
def client(served) -> Client:
    return Client(served["url"], verbose=False)


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_only_the_example_clips_are_served_never_the_corpus_labels(served):
    protocol = served["corpus"] / "ASVspoof5.eval.track_1.tsv"
    original = served["corpus"] / "flac_E_eval" / "E_0000000001.flac"
    for path in (protocol, original, served["corpus"]):
        status, _ = http_status(f"{served['url']}gradio_api/file={path}")
        assert status in (403, 404), f"{path} is served (HTTP {status})"
    status, _ = http_status(f"{served['url']}gradio_api/file={served['examples'][0].path}")
    assert status == 200  # the route itself works: the refusals above are real
    _, config = http_status(f"{served['url']}config")
    assert str(served["corpus"]) not in config and "E_0000000001" not in config
    assert str(Path(detector_module.__file__).parent.parent) not in config  # no server paths, model shown by name


def assert_same_numbers(api_output, expected):
    label, summary, timeline, usage_plot, novelty, details = api_output
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert label["label"] == app.VERDICTS[expected.verdict]
    assert confidences["bona fide"] == pytest.approx(expected.bonafide_probability, abs=1e-6)
    assert confidences["spoof"] == pytest.approx(1 - expected.bonafide_probability, abs=1e-6)
    assert f"Verdict: {app.VERDICTS[expected.verdict]}" in summary and f"{expected.score:+.4f}" in summary
    assert details["score"] == pytest.approx(expected.score, abs=1e-6)
    assert details["window_scores"] == pytest.approx(expected.window_scores.tolist(), abs=1e-6)
    np.testing.assert_allclose(details["expert_usage"], expected.expert_usage.numpy(), atol=1e-6)
    assert usage_plot["type"] == "matplotlib" and usage_plot["plot"].startswith("data:image/")
    assert "not available for this model" in novelty
    return timeline


def test_api_returns_the_detector_numbers(client, detector, clips):
    for name in ("mono16k", "stereo8k", "webm"):
        timeline = assert_same_numbers(client.predict(handle_file(clips[name]), api_name="/classify"),
                                       detector.predict(clips[name]))  # fmt: skip
        assert timeline["value"] is None and not timeline["visible"]
    timeline = assert_same_numbers(
        client.predict(handle_file(clips["long10s"]), api_name="/classify"), detector.predict(clips["long10s"])
    )
    assert timeline["visible"] and timeline["value"]["plot"].startswith("data:image/")
    label, summary, *_ = client.predict(handle_file(clips["silent"]), api_name="/classify")
    assert label["label"] == "near-silent" and "Verdict: none (near-silent)" in summary


def test_bad_requests_get_a_message_and_the_server_keeps_serving(client, detector, clips):
    for clip, message in [(None, "No audio"), ("text", "is not an audio file"), ("short", "at least 0.1 s"),
                          ("empty", "is empty"), ("nan", "NaN or infinite")]:  # fmt: skip
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
    assert header["models"] == "" and "  - " in readme.split("---\n")[1]  # the model the Space serves is linked
    assert "ffmpeg" in (SPACE_DIR / "packages.txt").read_text().split()
    assert not (SPACE_DIR / "routing_novelty.py").exists()  # no copy of the scoring logic in the Space
    import transformers

    assert f"transformers=={transformers.__version__}" in requirements
    assert f"gradio=={gr.__version__}" in requirements
    assert os.access(SPACE_DIR / "app.py", os.R_OK)


DETECTOR_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from detector import Detector
result = Detector(sys.argv[2]).predict(sys.argv[3])
print(json.dumps({"module": type(result).__module__, "score": result.score}))
"""


@pytest.mark.slow
def test_the_space_runs_any_molex_repo_through_remote_code_alone(space_model_dir, detector, clips, tmp_path):
    """The Space ships without this project: its code plus the model repo's remote code must be enough."""
    run = run_in_fresh_process(
        DETECTOR_SCRIPT, [str(SPACE_DIR), str(space_model_dir), str(clips["long10s"])], tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    output = json.loads(run.stdout.strip().splitlines()[-1])
    assert output["module"].startswith("transformers_modules.")  # the model repo's own scoring code ran
    assert output["score"] == pytest.approx(detector.predict(clips["long10s"]).score, abs=1e-6)
