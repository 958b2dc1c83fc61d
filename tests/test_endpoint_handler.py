"""The Inference Endpoints handler (`handler.py` at the root of a saved or pushed model folder): audio bytes or base64
in, the fields of `WaveformScore.to_dict()` out, through the model's one decoding and scoring path; clear errors for
bytes that are not audio and for bad parameters, naming the field."""

import base64
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_in_fresh_process
from fake_hub import hub  # noqa: F401  (the fixture)
from score_fixtures import save_cli_model, tone

from modeling_molex import MoLExForAudioClassification
from modeling_molex.scoring import WaveformScore


NO_FFMPEG = "the ffmpeg binary is not installed (apt-get install ffmpeg): WebM cannot be made or decoded"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_cli_model(tmp_path_factory.mktemp("handler_model") / "model")


def load_handler_module(folder: Path):
    """Import `folder/handler.py` the way Inference Endpoints does: a plain file, not part of any package."""
    spec = importlib.util.spec_from_file_location("handler", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def handler(model_dir):
    return load_handler_module(model_dir).EndpointHandler(path=str(model_dir))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("handler_audio")
    wav = root / "speech.wav"
    sf.write(wav, tone(1.2, 16_000, 3), 16_000)
    return {"wav": wav}


@pytest.fixture(scope="module")
def model(model_dir):
    return MoLExForAudioClassification.from_pretrained(model_dir).eval()


def test_save_pretrained_puts_handler_py_at_the_folder_root(model_dir):
    text = (model_dir / "handler.py").read_text()
    assert "class EndpointHandler" in text and "from ." not in text  # Endpoints imports it as a lone file


def test_wav_bytes_give_the_fields_and_numbers_of_score_file(handler, clips, model):
    result = handler({"inputs": clips["wav"].read_bytes()})
    expected = model.score_file(clips["wav"]).to_dict()
    assert set(result) == set(WaveformScore.__dataclass_fields__) == set(expected)
    assert result["verdict"] in ("bonafide", "spoof") and result["verdict"] == expected["verdict"]
    assert result["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert result["window_scores"] == pytest.approx(expected["window_scores"], abs=1e-6)
    assert result["duration"] == pytest.approx(1.2) and result["sampling_rate"] == 16_000
    json.dumps(result, allow_nan=False)  # JSON as Endpoints sends it


def test_base64_text_gives_the_same_result_as_bytes(handler, clips):
    raw = clips["wav"].read_bytes()
    as_bytes = handler({"inputs": raw})
    assert handler({"inputs": base64.b64encode(raw).decode()}) == as_bytes
    assert handler({"inputs": "data:audio/wav;base64," + base64.b64encode(raw).decode()}) == as_bytes


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason=NO_FFMPEG)
def test_webm_bytes_from_a_browser_get_a_verdict(handler, clips, model, tmp_path):
    webm = tmp_path / "phone.webm"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clips["wav"]), "-c:a", "libopus", str(webm)], check=True)
    result = handler({"inputs": webm.read_bytes(), "parameters": {"calibrate": False}})
    expected = model.score_file(webm, calibrate=False)
    assert result["verdict"] == expected.verdict and result["calibrated"] is False
    assert result["score"] == pytest.approx(expected.score, abs=1e-6)
    assert result["sampling_rate"] == 48_000  # Opus decodes at 48 kHz; the model resampled it


def test_digital_silence_is_valid_json(handler):
    buffer = __import__("io").BytesIO()
    sf.write(buffer, np.zeros(16_000, dtype=np.int16), 16_000, format="WAV")
    result = handler({"inputs": buffer.getvalue()})
    assert result["silent"] is True and result["verdict"] is None and result["level_dbfs"] is None
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (b"this is a text file, not audio", "not an audio file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt broken header", "not an audio file"),
        (b"", "inputs: empty"),
        ("this is not base64 !!!", "base64"),
        (42, "inputs"),
    ],
)
def test_bytes_that_are_not_audio_are_a_clear_error(handler, inputs, message):
    with pytest.raises(ValueError, match=message) as raised:
        handler({"inputs": inputs})
    assert "/tmp" not in str(raised.value)  # no server paths in what a client reads


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"parameters": {"batch_size": 0}}, "parameters.batch_size"),
        ({"parameters": {"batch_size": 2.5}}, "parameters.batch_size"),
        ({"parameters": {"calibrate": "yes"}}, "parameters.calibrate"),
        ({"parameters": {"flag_silence": 1}}, "parameters.flag_silence"),
        ({"parameters": {"max_seconds": -3}}, "parameters.max_seconds"),
        ({"parameters": {"max_seconds": 10_000}}, "parameters.max_seconds"),
        ({"parameters": {"silence_dbfs": float("nan")}}, "parameters.silence_dbfs"),
        ({"parameters": {"temperature": 0.5}}, "parameters.temperature"),
        ({"parameters": ["calibrate"]}, "parameters"),
        ({"input": "typo"}, "inputs"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(handler, clips, request_body, field):
    body = {"inputs": clips["wav"].read_bytes(), **request_body}
    if "input" in request_body:
        body.pop("inputs")
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        handler(body)


def test_max_seconds_parameter_refuses_longer_audio(handler, clips):
    with pytest.raises(ValueError, match="at most 1 s"):
        handler({"inputs": clips["wav"].read_bytes(), "parameters": {"max_seconds": 1}})


def test_push_to_hub_uploads_the_handler(hub, model):  # noqa: F811
    model.push_to_hub("me/molex-endpoint")
    [commit] = hub.commits("me/molex-endpoint")
    assert "handler.py" in commit["added"]
    assert b"class EndpointHandler" in hub.head("me/molex-endpoint")["files"]["handler.py"]


HANDLER_SCRIPT = """
import base64, json, sys
sys.path.insert(0, sys.argv[1])
from handler import EndpointHandler
handler = EndpointHandler(path=sys.argv[1])
print(json.dumps(handler({"inputs": base64.b64encode(open(sys.argv[2], "rb").read()).decode()})["score"]))
"""


@pytest.mark.slow
def test_handler_runs_where_the_project_is_not_installed(model_dir, clips, model, tmp_path):
    run = run_in_fresh_process(HANDLER_SCRIPT, [str(model_dir), str(clips["wav"])], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(run.stdout.strip().splitlines()[-1]) == pytest.approx(model.score_file(clips["wav"]).score, abs=1e-6)
