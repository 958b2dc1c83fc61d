"""The mini corpus's neural TTS attack (training.corpus.neural_tts): pins, the GPL boundary, errors, the batch process.

The corpus-level checks (the attack in a built corpus, hygiene, metadata, audio) live in test_mini_corpus.py.
"""

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml

from training.corpus import neural_tts
from training.corpus.attacks import ATTACK_BY_LABEL, ATTACKS, check_tools, synthesize
from training.corpus.neural_tts import PIPER_PINS, PIPER_SETTINGS, draw_settings, require_piper, synthesize_batch
from training.corpus.sources import MissingPackageError


ROOT = Path(__file__).resolve().parents[1]
PIPER_ATTACKS = [a for a in ATTACKS if a.tool == "piper"]


def _piper_or_skip() -> None:
    try:
        require_piper("the Piper tests")
    except MissingPackageError as error:
        pytest.skip(f"piper-tts is not installed (pip install -e '.[corpus]'): {error}")


def test_pins_are_the_corpus_extra_of_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert sorted(extras["corpus"]) == sorted(PIPER_PINS)
    assert all(a.pypi == PIPER_PINS for a in PIPER_ATTACKS)
    installed = re.search(r'-e "\.\[([a-z,]+)\]"', (ROOT / "scripts" / "setup.sh").read_text())
    assert installed and "corpus" in installed.group(1).split(","), "setup.sh must install the corpus extra"


def test_no_project_module_imports_the_gpl_engine():
    """piper-tts is GPL-3.0-or-later: only piper_process.py (run as its own program) may import it."""
    offenders = []
    for folder in ("modeling_molex", "training", "space_app", "bench", "scripts", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "piper_process.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(name == "piper" or name.startswith("piper.") for name in names):
                    offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_piper_attacks_train_on_one_label_and_test_it_as_known_in_eval():
    assert [(a.label, a.split, a.known_as) for a in PIPER_ATTACKS] == [("A13", "train", None), ("A14", "eval", "A13")]
    assert all(a.family == "TTS" and a.english_only and a.variants == ("joe",) for a in PIPER_ATTACKS)
    known = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["known_attacks"]
    assert sorted(known) == sorted(a.label for a in ATTACKS if a.known_as), "configs/tiny.yaml known_attacks"


def test_a_missing_piper_package_is_named_with_its_pip_line(monkeypatch):
    monkeypatch.setattr(neural_tts, "PIPER_PINS", ("no-such-tts-molex==1.0",))
    with pytest.raises(MissingPackageError, match=r"(?s)'no-such-tts-molex' is not installed.*pip install"):
        require_piper("a test")


def test_check_tools_refuses_another_piper_version(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(neural_tts.importlib.metadata, "version", lambda n: "0.0.1" if n == "piper-tts" else real(n))
    with pytest.raises(MissingPackageError, match=r"'piper-tts' is 0\.0\.1, the corpus pins 1\.8\.0.*A13"):
        check_tools()


def test_settings_stay_in_their_ranges_and_follow_the_seed():
    draws = [draw_settings(np.random.default_rng(3)) for _ in range(2)]
    assert draws[0] == draws[1] != draw_settings(np.random.default_rng(4))
    for seed in range(50):
        settings = dict(draw_settings(np.random.default_rng(seed)))
        assert set(settings) == set(PIPER_SETTINGS)
        assert all(low <= settings[name] <= high for name, (low, high) in PIPER_SETTINGS.items())


def test_piper_clips_are_never_synthesised_one_by_one():
    with pytest.raises(ValueError, match="one batch process"):
        synthesize(ATTACK_BY_LABEL["A13"], "joe", np.random.default_rng(0), "hello there friend", "en")


def test_a_tampered_voice_file_is_refused_naming_it(monkeypatch):
    _piper_or_skip()
    monkeypatch.setattr(
        neural_tts, "VOICE_FILES", {**neural_tts.VOICE_FILES, next(iter(neural_tts.VOICE_FILES)): "0" * 64}
    )
    with pytest.raises(ValueError, match=r"en_US-joe-medium\.onnx: sha256 [0-9a-f]{64} is not the pinned 0{64}"):
        neural_tts.voice_files()


@pytest.mark.slow
def test_one_batch_process_gives_speech_at_22050_hz_and_repeats_itself(tmp_path):
    _piper_or_skip()
    jobs = [("Please enter your account number.", draw_settings(np.random.default_rng(i))) for i in range(2)]
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        (tmp_path / name).mkdir()
        files = synthesize_batch(jobs, tmp_path / name, seed)
        assert [rate for _, rate in files] == [22050, 22050]
        runs.append([neural_tts.read_samples(path) for path, _ in files])
    for wave in runs[0]:
        assert 0.5 < wave.size / 22050 < 6 and 0.01 < np.sqrt(np.mean(wave**2)) and np.abs(wave).max() <= 1.0
    assert runs[0][0].size != runs[0][1].size or not np.array_equal(*runs[0]), "settings should change the clip"
    assert all(np.array_equal(x, y) for x, y in zip(runs[0], runs[1], strict=True)), "same seed, same samples"
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0], runs[2], strict=True)), "another seed, other noise"


@pytest.mark.slow
def test_an_engine_failure_stops_the_batch_with_its_message(tmp_path):
    _piper_or_skip()
    jobs = [("Hello there my friend.", (("length_scale", 1.0), ("noise_scale", 0.6)))]  # noise_w missing
    with pytest.raises(RuntimeError, match=r"(?s)Piper \(piper-tts\) failed.*noise_w"):
        synthesize_batch(jobs, tmp_path, 0)
