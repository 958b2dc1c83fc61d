"""TrainConfig validation: bad values are errors that name the field, before any training starts."""

import pytest
from accelerate import Accelerator

from training.trainer.config import TrainConfig, parse_train_config
from training.trainer.run_setup import build_model, min_input_samples


@pytest.mark.parametrize(
    ("field", "value"),
    [("weight_decay", "-0.01"), ("max_grad_norm", "-1"), ("crop_samples", "0"), ("save_total_limit", "0")],
)
def test_negative_or_zero_values_are_errors_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        parse_train_config(["--data_root", "/x", f"--{field}", value])


def test_zero_weight_decay_and_zero_clipping_stay_valid():
    config = parse_train_config(["--data_root", "/x", "--weight_decay", "0", "--max_grad_norm", "0"])
    assert (config.weight_decay, config.max_grad_norm) == (0.0, 0.0)


def test_a_crop_shorter_than_one_backbone_frame_is_an_error_naming_the_field(tmp_path):
    """The tiny backbone's front end is one 400-sample convolution: a 399-sample crop yields no frame at all."""
    accelerator = Accelerator(cpu=True)
    common = {"data_root": "/x", "output_dir": str(tmp_path), "num_experts": 2, "rank": 2, "head_hidden_size": 8}
    with pytest.raises(ValueError, match=r"`crop_samples` \(399\) is shorter than one frame .* 400 samples"):
        build_model(TrainConfig(**common, crop_samples=399), accelerator)
    model = build_model(TrainConfig(**common, crop_samples=400), accelerator)
    assert min_input_samples(model.config.backbone_config) == 400


def test_backbone_dropout_reaches_every_dropout_field_of_the_backbone(tmp_path):
    accelerator = Accelerator(cpu=True)
    common = {"data_root": "/x", "output_dir": str(tmp_path), "num_experts": 2, "rank": 2, "head_hidden_size": 8}
    default = build_model(TrainConfig(**common), accelerator).config.backbone_config
    assert default.hidden_dropout > 0  # the tiny backbone keeps wav2vec2's default dropout unless told
    backbone = build_model(TrainConfig(**common, backbone_dropout=0.0), accelerator).config.backbone_config
    for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout"):
        assert getattr(backbone, name) == 0.0, name
    with pytest.raises(ValueError, match="`backbone_dropout`"):
        TrainConfig(**common, backbone_dropout=1.5)


def test_a_whisper_backbone_trains_with_its_own_targets_and_frame_rule(tmp_path, tiny_backbone_dirs):
    """Unset `target_modules` means the family's six projections; Whisper's shortest input is 201 samples."""
    accelerator = Accelerator(cpu=True)
    common = {"data_root": "/x", "output_dir": str(tmp_path), "num_experts": 2, "rank": 2, "head_hidden_size": 8}
    common["backbone"] = tiny_backbone_dirs["whisper"]
    with pytest.raises(ValueError, match=r"`crop_samples` \(200\) is shorter than one frame .* 201 samples"):
        build_model(TrainConfig(**common, crop_samples=200), accelerator)
    model = build_model(TrainConfig(**common, crop_samples=32_000), accelerator)
    assert model.config.adapter.target_modules == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert not model.config.normalize_audio and len(model.expert_layers()) == 12
