"""Configs validate on construction with errors that name the field, and round-trip through JSON."""

import pytest
from conftest import tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"r": 0}, "`r`"),
        ({"top_k": 9}, "`top_k`"),
        ({"top_k": 0}, "`top_k`"),
        ({"lora_alpha": 0}, "`lora_alpha`"),
        ({"lora_dropout": 1.0}, "`lora_dropout`"),
        ({"target_modules": []}, "`target_modules`"),
        ({"layers_to_transform": [-1]}, "`layers_to_transform`"),
        ({"router_granularity": "frame"}, "`router_granularity`"),
        ({"router_scope": "model"}, "`router_scope`"),
        ({"router_noise_std": -1.0}, "`router_noise_std`"),
        ({"router_expert_dropout": 1.0}, "`router_expert_dropout`"),
        ({"router_expert_dropout": -0.1}, "`router_expert_dropout`"),
        ({"load_balance_coef": -0.1}, "`load_balance_coef`"),
        ({"expert_packs": {"base": 0}}, "`expert_packs\\['base'\\]`"),
        ({"frozen_packs": ["nope"]}, "`frozen_packs`"),
        ({"peft_type": "LORA"}, "`peft_type`"),
    ],
)
def test_adapter_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MoLExAdapterConfig(**kwargs)


def test_adapter_config_unknown_field_is_named():
    with pytest.raises(ValueError, match="num_expert"):
        MoLExAdapterConfig.from_dict({"num_expert": 3})


def test_expert_packs_define_num_experts():
    adapter = MoLExAdapterConfig(expert_packs={"base": 4, "domain": 2})
    assert adapter.num_experts == 6
    assert adapter.pack_of_expert() == ["base"] * 4 + ["domain"] * 2
    assert adapter.expert_names[-1] == "expert_5"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pooling": "max"}, "`pooling`"),
        ({"head_hidden_size": 0}, "`head_hidden_size`"),
        ({"head_dropout": 1.5}, "`head_dropout`"),
        ({"class_weights": [1.0]}, "`class_weights`"),
        ({"calibration": {"slope": 1.0}}, "`calibration`"),
        ({"adapter": {"layers_to_transform": [5]}}, "`adapter.layers_to_transform`"),
        ({"backbone_config": {"hidden_size": 8}}, "`backbone_config`"),
        ({"backbone_config": {"model_type": "bert"}}, "`backbone_config.model_type`"),
    ],
)
def test_molex_config_errors_name_the_field(kwargs, field):
    kwargs.setdefault("backbone_config", tiny_backbone_config("wav2vec2"))
    with pytest.raises(ValueError, match=field):
        MoLExConfig(**kwargs)


def test_molex_config_round_trips_and_fixes_labels(tmp_path):
    config = MoLExConfig(
        backbone_config=tiny_backbone_config("wavlm"),
        adapter=MoLExAdapterConfig(num_experts=3, top_k=1, r=2),
        pooling="mean",
        class_weights=[1.0, 9.0],
        calibration={"scale": 0.5, "bias": -1.0},
    )
    config.save_pretrained(tmp_path)
    loaded = MoLExConfig.from_pretrained(tmp_path)
    assert loaded.backbone_config.model_type == "wavlm" and loaded.backbone_config.hidden_size == 32
    assert loaded.backbone_config.layerdrop == 0.0
    assert loaded.adapter == config.adapter
    assert loaded.id2label == {0: "spoof", 1: "bonafide"} and loaded.label2id == {"spoof": 0, "bonafide": 1}
    assert (loaded.pooling, loaded.class_weights, loaded.calibration) == ("mean", [1.0, 9.0], config.calibration)
