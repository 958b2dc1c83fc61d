"""Finite or refused (issue 19, group 2): every number of the model and adapter configs has a named range that NaN
and the infinities fail, a calibration whose scale is not a finite number > 0 is refused at load, weights holding
NaN or an infinity are refused at load naming the tensor, and loading prints no generation-config warning."""

import json
import logging
import math

import pytest
import torch
from conftest import tiny_backbone_config
from safetensors.torch import load_file, save_file

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


def config(**fields) -> MoLExConfig:
    fields.setdefault("crop_samples", 4_000)
    return MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"),
                       adapter=MoLExAdapterConfig(num_experts=2, top_k=1, r=2), **fields)  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"calibration": {"scale": math.nan, "bias": 0.0}}, r"`calibration\.scale` must be a finite number in \(0, "),
        ({"calibration": {"scale": math.inf, "bias": 0.0}}, r"`calibration\.scale` must be a finite number"),
        ({"calibration": {"scale": 0.0, "bias": 0.0}}, r"`calibration\.scale` must be a finite number in \(0, "),
        ({"calibration": {"scale": -1.0, "bias": 0.0}}, r"`calibration\.scale`"),
        ({"calibration": {"scale": "1", "bias": 0.0}}, r"`calibration\.scale`"),
        ({"calibration": {"scale": True, "bias": 0.0}}, r"`calibration\.scale`"),
        ({"calibration": {"scale": 1.0, "bias": math.inf}}, r"`calibration\.bias` must be a finite number"),
        ({"calibration": {"scale": 1.0, "bias": math.nan}}, r"`calibration\.bias` must be a finite number"),
        ({"class_weights": [1.0, math.nan]}, r"`class_weights\[1\]` must be a finite number in \(0, "),
        ({"class_weights": [math.inf, 1.0]}, r"`class_weights\[0\]`"),
        ({"class_weights": [0.0, 1.0]}, r"`class_weights\[0\]`"),
        ({"class_weights": [1.0]}, r"`class_weights` must be two numbers"),
        ({"sampling_rate": 1}, r"`sampling_rate` must be an int in \[8,000, 192,000\], got 1"),
        ({"sampling_rate": 400_000}, r"`sampling_rate` must be an int in \[8,000, 192,000\]"),
        ({"crop_samples": 1_000_000_000}, r"`crop_samples` must be an int in \[20, 960,000\]"),  # 20: the tiny conv
        ({"crop_samples": 19}, r"`crop_samples` must be an int in \[20, 960,000\], got 19"),  # 60 s at 16 kHz
        ({"head_dropout": math.nan}, r"`head_dropout` must be a finite number in \[0, 1\)"),
        ({"initializer_range": math.nan}, r"`initializer_range` must be a finite number in \[0, 1\]"),
        ({"initializer_range": math.inf}, r"`initializer_range`"),
    ],
)
def test_model_config_numbers_have_named_ranges(fields, message):
    with pytest.raises(ValueError, match=message):
        config(**fields)


def test_crop_samples_range_follows_the_sampling_rate():
    assert config(sampling_rate=8_000, crop_samples=480_000).crop_samples == 480_000  # 60 s at 8 kHz
    with pytest.raises(ValueError, match=r"`crop_samples` must be an int in \[20, 480,000\]"):
        config(sampling_rate=8_000, crop_samples=480_001)
    with pytest.raises(ValueError, match=r"`crop_samples` must be an int in \[400, 960,000\], got 399"):
        MoLExConfig(crop_samples=399)  # a real wav2vec2 needs 400 samples (25 ms) for one frame


@pytest.mark.parametrize(
    ("field", "value"),
    [("lora_alpha", math.nan), ("lora_alpha", math.inf), ("lora_alpha", 0.0), ("lora_alpha", "16"),
     ("lora_dropout", math.nan), ("router_noise_std", math.nan), ("router_noise_std", math.inf),
     ("load_balance_coef", math.nan), ("orthogonality_coef", math.inf), ("router_z_loss_coef", math.nan),
     ("router_expert_dropout", math.nan)],
)  # fmt: skip
def test_adapter_config_numbers_must_be_finite(field, value):
    with pytest.raises(ValueError, match=rf"`{field}` must be a finite number"):
        MoLExAdapterConfig(num_experts=2, top_k=1, r=2, **{field: value})


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = MoLExForAudioClassification(config(calibration={"scale": 1.5, "bias": -0.2})).eval()
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize(("scale", "bias"), [(math.nan, 0.0), (0.0, 0.0), (-2.0, 0.0), (1.0, math.inf)])
def test_a_calibration_that_cannot_be_an_llr_is_refused_at_load(saved, scale, bias):
    path = saved / "config.json"
    data = json.loads(path.read_text())
    data["calibration"] = {"scale": scale, "bias": bias}
    path.write_text(json.dumps(data))  # json writes NaN / Infinity, and reads them back as floats
    with pytest.raises(ValueError, match=r"`calibration\.(scale|bias)` must be a finite number"):
        MoLExForAudioClassification.from_pretrained(saved)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_weights_that_are_not_finite_are_refused_at_load_naming_the_tensor(saved, bad):
    weights = load_file(saved / "model.safetensors")
    key = next(k for k in weights if k.endswith("classifier.out_proj.weight"))
    weights[key][0, 0] = bad
    save_file(weights, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"model: weight '{key}' holds 1 NaN or infinite value"):
        MoLExForAudioClassification.from_pretrained(saved)


def test_loading_prints_no_eos_token_warning(tmp_path, caplog):
    """Issue 19 item 11: every load warned "eos_token_id must be None or an integer within the vocabulary". The
    in-project SSL encoder has no CTC vocabulary (`vocab_size=2`) but kept wav2vec2's default `eos_token_id=2`; the
    encoder uses no tokens, so such ids become None, in new folders and when an older folder is read."""
    from transformers.utils import logging as transformers_logging

    backbone = tiny_backbone_config("wav2vec2")
    backbone.vocab_size = 2  # as training/encoders/ssl_model.py builds it
    torch.manual_seed(0)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=backbone, crop_samples=4_000))
    model.save_pretrained(tmp_path / "new")
    written = json.loads((tmp_path / "new" / "config.json").read_text())["backbone_config"]
    assert written.get("eos_token_id") is None and written["pad_token_id"] == 0 and written["bos_token_id"] == 1
    written["eos_token_id"] = 2  # a folder saved before the fix
    old = json.loads((tmp_path / "new" / "config.json").read_text())
    old["backbone_config"] = written
    (tmp_path / "new" / "config.json").write_text(json.dumps(old))
    transformers_logging.warning_once.cache_clear()  # the warning is printed once per process
    transformers_logging.set_verbosity_warning()
    transformers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            loaded = MoLExForAudioClassification.from_pretrained(tmp_path / "new")
    finally:
        transformers_logging.disable_propagation()
        transformers_logging.set_verbosity_error()
    assert "eos_token_id" not in caplog.text
    assert loaded.config.backbone_config.eos_token_id is None


def test_the_ssl_encoder_recipe_declares_no_token_ids():
    from training.encoders.ssl_config import SSLPretrainConfig
    from training.encoders.ssl_model import encoder_config

    config = encoder_config(SSLPretrainConfig(corpus_dir="unused"))
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (None, None, None)
