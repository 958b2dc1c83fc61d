"""SSL pretraining (training/pretrain_ssl.py) on a tiny on-disk pool: the exported encoder loads in a fresh
process and under MoLEx, a resumed run equals an uninterrupted one, unreadable clips are skipped or refused."""

import json

import pytest
import torch
from conftest import run_in_fresh_process
from safetensors.torch import load_file
from ssl_fixtures import tiny_pretrain_args, write_corpus_metadata, write_pool

from modeling_molex import MoLExAdapterConfig, MoLExForAudioClassification
from training import pretrain_ssl
from training.data.audio import AudioDecodeError


@pytest.fixture
def pool_and_corpus(tmp_path):
    pool = tmp_path / "pool"
    write_pool(pool)
    return pool, write_corpus_metadata(tmp_path / "corpus", [])


FRESH_LOAD = """
import sys, torch
from transformers import AutoFeatureExtractor, AutoModel
encoder = AutoModel.from_pretrained(sys.argv[1])
extractor = AutoFeatureExtractor.from_pretrained(sys.argv[1])
inputs = extractor([0.1 * torch.randn(8000).numpy()], sampling_rate=16000, return_tensors="pt")
with torch.inference_mode():
    hidden = encoder(**inputs).last_hidden_state
print(type(encoder).__name__, tuple(hidden.shape), extractor.do_normalize)
"""


@pytest.mark.slow
def test_two_steps_write_an_encoder_that_loads_in_a_fresh_process_and_under_molex(pool_and_corpus, tmp_path):
    pool, corpus = pool_and_corpus
    summary = pretrain_ssl.main(tiny_pretrain_args(corpus, pool, tmp_path / "run", steps=2))
    assert summary["steps"] == 2 and summary["pool_clips"] == 6
    encoder = tmp_path / "run" / "encoder"
    result = run_in_fresh_process(FRESH_LOAD, [str(encoder)], tmp_path)
    assert result.returncode == 0, result.stderr
    # 8000 samples through kernels (10, 8, 16) with strides (5, 4, 16): 1599 -> 398 -> 24 frames of width 32.
    assert result.stdout.split()[:4] == ["Wav2Vec2Model", "(1,", "24,", "32)"] and "True" in result.stdout
    # The CNN is trained: its weights moved away from the seed's initialisation.
    trained = load_file(encoder / "model.safetensors")
    torch.manual_seed(0)
    start = pretrain_ssl.MaskedPredictionModel(
        pretrain_ssl.encoder_config(
            pretrain_ssl.parse_ssl_config(tiny_pretrain_args(corpus, pool, tmp_path / "x", 2))
        ),
        [8, 4],
    ).encoder.state_dict()
    assert not torch.equal(
        trained["feature_extractor.conv_layers.0.conv.weight"], start["feature_extractor.conv_layers.0.conv.weight"]
    )
    model = MoLExForAudioClassification.from_backbone(
        str(encoder), adapter=MoLExAdapterConfig(num_experts=2, top_k=1, r=2)
    )
    assert model.config.normalize_audio is True
    assert torch.equal(
        model.backbone.feature_extractor.conv_layers[0].conv.weight,
        trained["feature_extractor.conv_layers.0.conv.weight"],
    )
    logs = [json.loads(line) for line in (tmp_path / "run" / "logs" / "pretrain_log.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(0 <= r["masked_acc_0"] <= 1 and r["loss"] > 0 for r in train)


def test_a_resumed_run_continues_from_the_same_step_and_ends_where_an_uninterrupted_one_does(
    pool_and_corpus, tmp_path
):
    pool, corpus = pool_and_corpus
    pretrain_ssl.main(tiny_pretrain_args(corpus, pool, tmp_path / "straight", steps=4))
    interrupted = tiny_pretrain_args(corpus, pool, tmp_path / "resumed", steps=4)
    first = pretrain_ssl.main([*interrupted, "--max_minutes", "0.000001"])  # stops after one step
    assert first["steps"] == 1 and first["stopped_by_max_minutes"]
    second = pretrain_ssl.main([*interrupted, "--resume", "true"])
    assert second["steps"] == 4
    logs = [
        json.loads(line) for line in (tmp_path / "resumed" / "logs" / "pretrain_log.jsonl").read_text().splitlines()
    ]
    assert any(r["event"] == "resumed" and r["step"] == 1 for r in logs)
    assert [r["step"] for r in logs if r["event"] == "train"] == [1, 2, 3, 4]
    straight = load_file(tmp_path / "straight" / "encoder" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "encoder" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_an_unreadable_pool_clip_is_counted_and_skipped_or_refused_with_its_path(pool_and_corpus, tmp_path):
    pool, corpus = pool_and_corpus
    broken = pool / "flac" / "P_000002.flac"
    broken.write_bytes(b"not audio at all")
    args = tiny_pretrain_args(corpus, pool, tmp_path / "run", steps=1)
    with pytest.raises(AudioDecodeError, match="P_000002.flac"):
        pretrain_ssl.main([*args, "--on_bad_audio", "raise"])
    summary = pretrain_ssl.main([*args, "--on_bad_audio", "skip"])
    assert summary["unreadable_skipped"] == 1 and summary["pool_clips"] == 5
    logs = [json.loads(line) for line in (tmp_path / "run" / "logs" / "pretrain_log.jsonl").read_text().splitlines()]
    skipped = [r for r in logs if r["event"] == "unreadable_clips"]
    assert skipped[0]["count"] == 1 and skipped[0]["files"] == [str(broken)]


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="conv_stride"):
        pretrain_ssl.parse_ssl_config(["--corpus_dir", "x", "--conv_stride", "5", "4"])
    with pytest.raises(ValueError, match="mask_prob"):
        pretrain_ssl.parse_ssl_config(["--corpus_dir", "x", "--mask_prob", "1.5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus_dir: x\ncodebooks: [{features: wavelets, dims: 4, clusters: 4}]\n")
    with pytest.raises(ValueError, match=r"codebooks\[0\].features"):
        pretrain_ssl.parse_ssl_config(["--config", str(bad)])
