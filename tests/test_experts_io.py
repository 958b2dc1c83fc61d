"""Save/load round trips, per-expert PEFT folders, expert packs and domain adaptation with add_experts."""

import json
import os

import pytest
import torch
from conftest import FAMILIES, random_audio, randomize_experts, tiny_backbone_config
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


def build(family: str = "wav2vec2", seed: int = 0, **adapter_kwargs) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(**{"num_experts": 4, "top_k": 2, "r": 4, **adapter_kwargs})
    torch.manual_seed(seed)
    return MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config(family), adapter=adapter))


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip_is_bit_exact(family, tmp_path):
    model = build(family).eval()
    randomize_experts(model)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "experts"} <= files
    assert {"modeling_molex.py", "configuration_molex.py", "layers.py", "router.py"} <= files
    assert "adapter_config.json" not in files  # would make transformers treat the folder as a PEFT adapter
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_molex.MoLExConfig",
        "AutoModelForAudioClassification": "modeling_molex.MoLExForAudioClassification",
    }
    loaded = MoLExForAudioClassification.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    audio = random_audio()
    with torch.no_grad():
        assert torch.equal(model(audio).logits, loaded(audio).logits)


def test_adapter_config_round_trips_peft_style(tmp_path):
    adapter = MoLExAdapterConfig(num_experts=3, top_k=1, r=2, target_modules=["q_proj"], layers_to_transform=[1])
    adapter.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "molex_pack_config.json").read_text())
    assert data["peft_type"] == "MOLEX" and list(data) == sorted(data)
    assert MoLExAdapterConfig.from_pretrained(tmp_path) == adapter
    assert MoLExAdapterConfig.from_dict(adapter.to_dict()) == adapter


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "whisper"])  # Whisper: onto a WhisperModel
def test_one_expert_folder_loads_with_plain_peft_and_reproduces_its_delta(family, tiny_backbone_dirs, tmp_path):
    model = MoLExForAudioClassification.from_backbone(
        tiny_backbone_dirs[family], adapter=MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    )
    randomize_experts(model)
    model.save_pretrained(tmp_path / "model")
    expert = 2
    folder = tmp_path / "model" / "experts" / f"expert_{expert}"
    peft_config = json.loads((folder / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["base_model_name_or_path"] == tiny_backbone_dirs[family]
    vanilla = AutoModel.from_pretrained(tiny_backbone_dirs[family])
    peft_model = PeftModel.from_pretrained(vanilla, str(folder)).eval()
    peft_modules = dict(peft_model.base_model.model.named_modules())
    layers = model.expert_layers()
    assert len(layers) == 12
    for path, layer in layers.items():
        lora_module = peft_modules[path]
        x = torch.randn(2, 5, layer.in_features)
        with torch.no_grad():
            peft_delta = lora_module(x) - lora_module.base_layer(x)
            torch.testing.assert_close(peft_delta, layer.expert_delta(x, expert), atol=1e-6, rtol=1e-5)
            assert peft_delta.abs().max() > 0


def test_expert_pack_save_load_reproduces_the_model(tmp_path):
    trained = build(seed=0).eval()
    randomize_experts(trained, seed=1)
    pack_name = trained.add_experts(2, pack_name="domain_b")
    randomize_experts(trained, seed=2)  # pretend the new pack was trained (old packs are overwritten identically)
    base_state = {k: v.clone() for k, v in trained.state_dict().items() if ".lora_" not in k and "router" not in k}
    saved = trained.save_experts(tmp_path / "pack", names=[pack_name])
    assert saved == ["expert_4", "expert_5"]
    assert sorted(os.listdir(tmp_path / "pack")) == [
        "expert_4",
        "expert_5",
        "index.json",
        "molex_pack_config.json",
        "router.safetensors",
    ]
    # A model holding only the base pack, then the shipped pack on top of it.
    fresh = build(seed=0).eval()
    randomize_experts(fresh, seed=1)
    trained_base = {k: v for k, v in trained.state_dict().items() if k.endswith(".0") or k in base_state}
    fresh.load_state_dict(trained_base, strict=False)
    new_packs = fresh.load_experts(tmp_path / "pack")
    assert new_packs == ["domain_b"]
    assert fresh.config.adapter.expert_packs == {"base": 4, "domain_b": 2}
    assert "domain_b" in fresh.config.adapter.frozen_packs
    audio = random_audio()
    with torch.no_grad():
        torch.testing.assert_close(fresh(audio).logits, trained(audio).logits)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"r": 2}, "`r`"),
        ({"target_modules": ["q_proj", "v_proj"]}, "`target_modules`"),
        ({"router_granularity": "token"}, "`router_granularity`"),
    ],
)
def test_incompatible_pack_is_refused_naming_the_field(tmp_path, change, field):
    source = build(**change)
    source.save_experts(tmp_path / "pack")
    target = build()
    before = dict(target.config.adapter.expert_packs)
    with pytest.raises(ValueError, match=field):
        target.load_experts(tmp_path / "pack")
    assert target.config.adapter.expert_packs == before


def test_pack_from_another_backbone_is_refused(tmp_path):
    source = build("hubert")
    source.save_experts(tmp_path / "pack")
    with pytest.raises(ValueError, match="backbone.model_type"):
        build("wav2vec2").load_experts(tmp_path / "pack")


def test_loading_the_same_pack_twice_is_refused(tmp_path):
    model = build()
    model.save_experts(tmp_path / "pack")
    with pytest.raises(ValueError, match="`expert_packs`"):
        model.load_experts(tmp_path / "pack")


def test_unknown_expert_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown expert or pack 'expert_9'"):
        build().save_experts(tmp_path / "pack", names=["expert_9"])


def test_add_experts_trains_only_the_new_pack(tmp_path):
    model = build().train()
    randomize_experts(model)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_experts(2, pack_name="new")
    for layer in model.expert_layers().values():
        assert torch.count_nonzero(layer.lora_B[1]) == 0  # new experts start with a zero delta
        x = torch.randn(1, 3, layer.in_features)
        assert torch.count_nonzero(layer.expert_delta(x, 4)) == 0
    # Make the router pick the new experts so that they are on the gradient path.
    with torch.no_grad():
        for router in model.routers().values():
            router.weight[1].copy_(router.weight[0][:2] * 0 + 5.0 * router.weight[0][:2].sign())
    out = model(random_audio(), labels=torch.tensor([0, 1]))
    assert (out.expert_usage[..., 4:].sum(-1) > 0).all()
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".1") for n in trainable), trainable
    for name, parameter in model.named_parameters():
        if name in trainable and "lora_A" not in name:  # A gets no gradient while B is still exactly 0
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        if name not in trainable:
            assert parameter.grad is None, name
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1).step()
    for key, value in old.items():
        assert torch.equal(model.state_dict()[key], value), key
    # The frozen/trainable split survives a save/load round trip.
    model.save_pretrained(tmp_path)
    reloaded = MoLExForAudioClassification.from_pretrained(tmp_path)
    assert reloaded.config.adapter.frozen_packs == ["base"]
    assert {n for n, p in reloaded.backbone.named_parameters() if p.requires_grad} == {
        n.removeprefix("backbone.") for n in trainable
    }
    index = json.loads((tmp_path / "experts" / "index.json").read_text())
    assert [e["pack"] for e in index["experts"]] == ["base"] * 4 + ["new"] * 2
    rows = load_file(tmp_path / "experts" / "router.safetensors")
    assert all(t.shape[0] == 6 for t in rows.values())


def test_a_pack_smaller_than_top_k_saves_and_loads(tmp_path):
    model = build(top_k=2)
    model.add_experts(1, pack_name="single")
    assert model.save_experts(tmp_path / "pack", names=["single"]) == ["expert_4"]
    host = build(top_k=2)
    assert host.load_experts(tmp_path / "pack") == ["single"]
    assert host.config.adapter.top_k == 2 and host.config.adapter.expert_packs == {"base": 4, "single": 1}


def test_models_never_share_an_adapter_config(tiny_backbone_dirs):
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    first = MoLExForAudioClassification.from_backbone(tiny_backbone_dirs["wav2vec2"], adapter=adapter)
    second = MoLExForAudioClassification.from_backbone(tiny_backbone_dirs["wav2vec2"], adapter=adapter)
    first.add_experts(2)
    assert second.config.adapter.expert_packs == {"base": 4}
    assert adapter.expert_packs == {"base": 4} and adapter.base_model_name_or_path is None


def test_loading_a_pack_keeps_a_frozen_head_frozen(tmp_path):
    source = build()
    source.add_experts(2, pack_name="other")
    source.save_experts(tmp_path / "pack", names=["other"])
    model = build()
    model.add_experts(1, pack_name="mine", train_head=False)
    model.load_experts(tmp_path / "pack")
    assert not any(p.requires_grad for p in model.classifier.parameters())


def test_checkpoint_missing_expert_weights_is_refused(tmp_path):
    build().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "molex_router" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks 2 weight.*molex_router"):
        MoLExForAudioClassification.from_pretrained(tmp_path)


def test_failed_save_leaves_the_folder_untouched(tmp_path, monkeypatch):
    model = build()
    model.save_pretrained(tmp_path / "model")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "model").iterdir()}
    randomize_experts(model, seed=5)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("modeling_molex.model_folder.save_expert_pack", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "model")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "model").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging leftovers


def _edit_index(pack_dir, edit) -> None:
    path = pack_dir / "index.json"
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


def _state(model) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.mark.parametrize("escape", ["../outside/evil", "ABSOLUTE", "expert_0/../../outside/evil", ".", ""])
def test_an_expert_name_outside_the_pack_is_refused_naming_the_entry(tmp_path, escape):
    source = build(seed=3)
    source.add_experts(1, pack_name="shipped")
    randomize_experts(source)
    source.save_experts(tmp_path / "pack", names=["shipped"])
    # A complete, valid expert outside the pack: loading it must be refused all the same.
    outside = tmp_path / "outside" / "evil"
    outside.parent.mkdir()
    os.replace(tmp_path / "pack" / "expert_4", outside)
    name = str(outside) if escape == "ABSOLUTE" else escape

    def point_outside(index):
        index["experts"][0]["name"] = name

    _edit_index(tmp_path / "pack", point_outside)
    target = build()
    before = _state(target)
    with pytest.raises(ValueError) as error:
        target.load_experts(tmp_path / "pack")
    assert str(error.value) == (
        f"{tmp_path / 'pack' / 'index.json'}: entry 0 names expert {name!r}; an expert name must be a plain folder "
        "name inside the pack (no path separators, '..' or absolute paths)"
    )
    assert target.state_dict().keys() == before.keys()
    assert all(torch.equal(target.state_dict()[key], value) for key, value in before.items())


@pytest.mark.parametrize(
    "defect",
    [
        "index_lists_fewer_experts",
        "expert_file_missing",
        "expert_tensor_missing",
        "expert_tensor_wrong_shape",
        "router_rows_missing",
        "router_rows_wrong_shape",
    ],
)
def test_a_refused_load_leaves_the_model_unchanged_and_a_valid_load_still_works(tmp_path, defect):
    source = build(seed=3)
    randomize_experts(source)
    source.add_experts(3, pack_name="extra")
    randomize_experts(source, seed=5)
    source.save_experts(tmp_path / "good", names=["extra"])
    source.save_experts(tmp_path / "bad", names=["extra"])
    bad = tmp_path / "bad"
    if defect == "index_lists_fewer_experts":
        _edit_index(bad, lambda index: index["experts"].pop())
    elif defect == "expert_file_missing":
        (bad / "expert_6" / "adapter_model.safetensors").unlink()
    elif defect in ("expert_tensor_missing", "expert_tensor_wrong_shape"):
        weights_path = bad / "expert_6" / "adapter_model.safetensors"
        tensors = load_file(weights_path)
        key = "base_model.model.encoder.layers.1.feed_forward.output_dense.lora_A.weight"
        if defect == "expert_tensor_missing":
            del tensors[key]
        else:
            tensors[key] = torch.zeros(2, tensors[key].shape[1])
        save_file(tensors, weights_path)
    else:
        rows = load_file(bad / "router.safetensors")
        if defect == "router_rows_missing":
            del rows["layer_1"]
        else:
            rows["layer_1"] = rows["layer_1"][:2]
        save_file(rows, bad / "router.safetensors")
    target = build()
    before, adapter_before = _state(target), target.config.adapter.to_dict()
    with pytest.raises((ValueError, KeyError, FileNotFoundError)) as error:
        target.load_experts(bad)
    key = "base_model.model.encoder.layers.1.feed_forward.output_dense.lora_A.weight"
    weights_path = bad / "expert_6" / "adapter_model.safetensors"
    assert (
        error.value.args[0]
        == {  # each error names the file and what is wrong in it
            "index_lists_fewer_experts": f"{bad / 'index.json'}: `experts` lists 2 experts, the pack config declares 3 "
            f"(`expert_packs` of {bad / 'molex_pack_config.json'})",
            "expert_tensor_missing": f"{weights_path}: missing tensor {key!r}",
            "expert_tensor_wrong_shape": f"{weights_path}: tensor {key!r} has shape (2, 64), expected (4, 64)",
            "router_rows_missing": f"{bad / 'router.safetensors'}: no rows for routers ['layer_1']",
            "expert_file_missing": f"Expert pack {bad}: expert 'expert_6' has no adapter_model.safetensors",
            "router_rows_wrong_shape": f"{bad / 'router.safetensors'}: router 'layer_1' rows have shape (2, 32), "
            "expected (3, 32)",
        }[defect]
    )
    assert target.config.adapter.to_dict() == adapter_before
    assert target.state_dict().keys() == before.keys()
    assert all(torch.equal(target.state_dict()[key], value) for key, value in before.items())
    assert target.load_experts(tmp_path / "good") == ["extra"]
    assert target.config.adapter.expert_packs == {"base": 4, "extra": 3}


@pytest.mark.parametrize(("field", "value"), [("model_type", "hubert"), ("hidden_size", 48), ("num_hidden_layers", 5)])
def test_a_pack_for_another_backbone_is_refused_naming_the_backbone_field(tmp_path, field, value):
    model = build()
    model.save_experts(tmp_path / "pack")
    _edit_index(tmp_path / "pack", lambda index: index["backbone"].update({field: value}))
    ours = getattr(model.config.backbone_config, field)
    with pytest.raises(ValueError) as error:
        build().load_experts(tmp_path / "pack")
    assert (
        str(error.value)
        == f"Expert pack {tmp_path / 'pack'}: `backbone.{field}` is {value!r} but this model has {ours!r}"
    )


def test_a_failed_pack_save_leaves_no_staging_folder_and_the_old_pack_intact(tmp_path, monkeypatch):
    model = build()
    model.save_experts(tmp_path / "pack")
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("modeling_molex.experts_io.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_experts(tmp_path / "pack")
    assert {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_experts_can_be_saved_by_name_and_mixed_with_packs(tmp_path):
    model = build()
    model.add_experts(2, pack_name="extra")
    assert model.save_experts(tmp_path / "pack", names=["expert_5", "expert_1"]) == ["expert_1", "expert_5"]
    index = json.loads((tmp_path / "pack" / "index.json").read_text())
    assert [(e["name"], e["pack"], e["router_column"]) for e in index["experts"]] == [
        ("expert_1", "base", 0),
        ("expert_5", "extra", 1),
    ]
    assert model.save_experts(tmp_path / "mixed", names=["extra", "expert_0"]) == ["expert_0", "expert_4", "expert_5"]
