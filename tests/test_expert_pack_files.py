"""The files of an expert pack, byte for byte where a consumer depends on them (found by mutation testing): the PEFT
LoraConfig of each expert, stable sorted JSON, overwriting an existing pack folder, and finding the pack inside a
saved model folder."""

import json
import os

import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


def build(**adapter_kwargs) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(**{"num_experts": 3, "top_k": 2, "r": 4, "lora_alpha": 6.0, **adapter_kwargs})
    torch.manual_seed(0)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model)
    return model


def test_each_expert_folder_has_exactly_peft_lora_config(tmp_path):
    model = build(lora_dropout=0.1, target_modules=["q_proj", "v_proj"], layers_to_transform=[1])
    model.config.adapter.base_model_name_or_path = "org/tiny-backbone"
    model.save_experts(tmp_path / "pack")
    config = json.loads((tmp_path / "pack" / "expert_1" / "adapter_config.json").read_text())
    assert config == {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": "org/tiny-backbone",
        "revision": None,
        "inference_mode": True,
        "r": 4,
        "lora_alpha": 6.0,
        "lora_dropout": 0.1,
        "target_modules": ["encoder.layers.1.attention.q_proj", "encoder.layers.1.attention.v_proj"],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }


def test_pack_json_is_sorted_indented_and_newline_terminated(tmp_path):
    """Stable bytes: saving the same experts twice gives identical files (clean diffs, no needless Hub uploads)."""
    model = build()
    model.save_experts(tmp_path / "first")
    model.save_experts(tmp_path / "second")
    for name in ("index.json", "expert_0/adapter_config.json"):
        text = (tmp_path / "first" / name).read_text()
        assert text == (tmp_path / "second" / name).read_text()
        data = json.loads(text)
        assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_saving_over_an_existing_pack_replaces_it_whole(tmp_path):
    model = build()
    model.add_experts(2, pack_name="extra")
    target = tmp_path / "pack"
    model.save_experts(target)  # 5 experts
    (target / "stale.txt").write_text("left by someone")
    assert model.save_experts(target, names=["extra"]) == ["expert_3", "expert_4"]
    assert sorted(os.listdir(target)) == [
        "expert_3",
        "expert_4",
        "index.json",
        "molex_pack_config.json",
        "router.safetensors",
    ]
    assert os.listdir(tmp_path) == ["pack"]  # no staging or retired folders left beside it
    index = json.loads((target / "index.json").read_text())
    assert [e["name"] for e in index["experts"]] == ["expert_3", "expert_4"]


def test_a_saved_model_folder_is_found_as_a_pack_and_a_plain_folder_is_refused(tmp_path):
    source = build()
    source.add_experts(1, pack_name="domain")
    source.save_pretrained(tmp_path / "model")  # the pack lives in model/experts/
    host = build()
    with pytest.raises(ValueError, match="`expert_packs`"):  # found (base clashes): the experts/ subfolder was used
        host.load_experts(tmp_path / "model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"empty: no expert pack \(index.json \+ molex_pack_config.json\) here or in experts/"
    ):
        host.load_experts(empty)
    (empty / "index.json").write_text("{}")  # one of the two files is not a pack
    with pytest.raises(FileNotFoundError, match="no expert pack"):
        host.load_experts(empty)


def _pack_with_index(tmp_path, edit) -> tuple:
    source = build()
    source.add_experts(2, pack_name="domain")
    source.save_experts(tmp_path / "pack", names=["domain"])
    index_path = tmp_path / "pack" / "index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps(edit(index)))
    return build(), tmp_path / "pack"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda index: [index], r"`format` is 'list', expected 'molex-expert-pack'"),
        (lambda index: {**index, "format": "other"}, r"`format` is 'other', expected"),
        (lambda index: {**index, "experts": {"a": 1}}, r"`experts` lists dict experts, the pack config declares 2"),
        (
            lambda index: {**index, "experts": index["experts"][:1]},
            r"`experts` lists 1 experts, the pack config declares 2",
        ),
        (
            lambda index: {**index, "experts": [{**index["experts"][0], "name": "../x"}, index["experts"][1]]},
            r"entry 0 names expert '\.\./x'; an expert name must be a plain folder name inside the pack \(no path",
        ),
        (
            lambda index: {**index, "experts": [index["experts"][0], {**index["experts"][1], "name": "a\\b"}]},
            r"entry 1 names expert 'a\\\\b'",
        ),
        (lambda index: {**index, "experts": [index["experts"][0], "x"]}, r"entry 1 names expert None"),
        (
            lambda index: {**index, "experts": [{**entry, "router_column": 0} for entry in index["experts"]]},
            r"index\.json: `router_column` values must be 0\.\.1, each once$",
        ),
        (
            lambda index: {**index, "experts": [{**e, "name": index["experts"][0]["name"]} for e in index["experts"]]},
            r"index\.json: expert names are not unique$",
        ),
    ],
)
def test_a_malformed_index_is_refused_naming_the_problem_before_the_model_changes(tmp_path, edit, message):
    host, pack = _pack_with_index(tmp_path, edit)
    before = dict(host.config.adapter.expert_packs)
    with pytest.raises(ValueError, match=message):
        host.load_experts(pack)
    assert host.config.adapter.expert_packs == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lora_alpha": 3.0}, "`lora_alpha` is 3.0 but this model has 6.0"),
        ({"layers_to_transform": [0]}, r"`layers_to_transform` is \[0\] but this model has None"),
        ({"router_scope": "module"}, "`router_scope` is 'module' but this model has 'block'"),
    ],
)
def test_an_incompatible_pack_names_the_field_and_both_values(tmp_path, change, field):
    build(**change).save_experts(tmp_path / "pack")
    with pytest.raises(ValueError, match=field):
        build().load_experts(tmp_path / "pack")
