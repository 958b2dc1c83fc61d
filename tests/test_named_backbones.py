"""Backbone names that resolve offline (`training/encoders/named_backbones.py`): `whisper-tiny.en` / `whisper-base`
convert the pinned packages once into the cache and train from there; `tiny-random` builds into the run's folder;
anything else is a Hub id or a folder and passes through untouched."""

import json

import pytest
from accelerate import Accelerator

from tests.ctranslate2_fixtures import (
    ENGLISH_ONLY_VOCAB,
    ctranslate2_whisper_bytes,
    install_fake_weights,
    random_whisper,
)
from training.encoders import import_whisper
from training.encoders.named_backbones import named_backbone_folder, resolve_named_backbone
from training.trainer.config import parse_train_config
from training.trainer.run_setup import build_model


@pytest.fixture
def packaged_tiny_en(tmp_path, monkeypatch):
    """'whisper-tiny.en' served by a fake installed package of a tiny random Whisper, cache under tmp_path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    model_bin = ctranslate2_whisper_bytes(random_whisper(seed=3))
    weights = install_fake_weights(site, model_bin, ENGLISH_ONLY_VOCAB, name="tiny.en")
    monkeypatch.setitem(import_whisper.WHISPER_WEIGHTS, "tiny.en", weights)
    monkeypatch.setenv("MOLEX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "encoders" / "whisper-tiny.en"


def test_training_on_whisper_tiny_en_converts_once_into_the_cache(packaged_tiny_en, tmp_path, monkeypatch):
    calls = []
    real_write = import_whisper.write_whisper_folder
    monkeypatch.setattr(import_whisper, "write_whisper_folder", lambda *args: calls.append(1) or real_write(*args))
    argv = ["--data_root", "/x", "--output_dir", str(tmp_path / "run"), "--backbone", "whisper-tiny.en"]
    argv += ["--num_experts", "2", "--top_k", "1", "--rank", "2", "--backbone_dropout", "0"]
    for _ in range(2):
        model = build_model(parse_train_config(argv), Accelerator(cpu=True))
    assert calls == [1]  # the second run reuses the complete conversion
    assert named_backbone_folder("whisper-tiny.en", tmp_path / "run") == str(packaged_tiny_en)
    backbone_config = model.config.backbone_config
    assert backbone_config.model_type == "whisper"
    # what the weights are, not where this machine cached them: the card, the Hub's base_model and each exported
    # expert's adapter_config name OpenAI's original (the packaged weights are its float16 copy)
    assert model.config.backbone_name_or_path == "openai/whisper-tiny.en"
    assert model.config.adapter.base_model_name_or_path == "openai/whisper-tiny.en"
    model.save_pretrained(tmp_path / "saved")
    exported = json.loads((tmp_path / "saved" / "experts" / "expert_0" / "adapter_config.json").read_text())
    assert exported["base_model_name_or_path"] == "openai/whisper-tiny.en"
    assert str(tmp_path) not in (tmp_path / "saved" / "config.json").read_text()
    # every dropout a WhisperConfig has (its names differ from wav2vec2's) is overridden
    assert backbone_config.dropout == backbone_config.attention_dropout == backbone_config.activation_dropout == 0
    assert set(model.config.adapter.target_modules) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_other_values_pass_through_and_tiny_random_builds_in_the_run_folder(tmp_path):
    assert resolve_named_backbone("facebook/wav2vec2-xls-r-300m", tmp_path) == "facebook/wav2vec2-xls-r-300m"
    assert named_backbone_folder("/some/folder", tmp_path) is None
    folder = resolve_named_backbone("tiny-random", tmp_path, seed=1)
    assert folder == str(tmp_path / "tiny_backbone") and (tmp_path / "tiny_backbone" / "config.json").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["tiny_backbone"]  # no staging folder left
