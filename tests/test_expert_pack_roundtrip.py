"""An expert pack whose router rows are NOT zero survives save -> load exactly, and the rows are the ones used.

A freshly added pack has all-zero router rows, so a pack written with zeros (or with another router's rows) would
look fine; here every router gets its own random rows before saving.
"""

import json
import re

import torch
from conftest import random_audio, randomize_experts, tiny_backbone_config
from safetensors import safe_open
from safetensors.torch import load_file

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


def load_file_metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def build(scope: str = "block", seed: int = 0) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(num_experts=3, top_k=2, r=4, router_scope=scope)
    torch.manual_seed(seed)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, seed=1)
    return model.eval()


def trained_pack_model(scope: str) -> MoLExForAudioClassification:
    model = build(scope)
    model.add_experts(2, pack_name="domain_b")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.expert_layers().values():
            layer.lora_B[-1].copy_(torch.randn(layer.lora_B[-1].shape, generator=generator) * 0.3)
        for router in model.routers().values():
            rows = router.weight[-1]
            rows.copy_(torch.randn(rows.shape, generator=generator) * 3.0)  # strong rows: the new experts get picked
    return model


def test_router_rows_on_disk_are_the_models_rows_of_that_pack(tmp_path):
    model = trained_pack_model("block")
    model.save_experts(tmp_path / "pack", names=["domain_b"])
    on_disk = load_file(tmp_path / "pack" / "router.safetensors")
    assert set(on_disk) == set(model.routers())
    for name, router in model.routers().items():
        expected = router.full_weight()[3:5].detach()
        assert expected.abs().min() > 0
        assert torch.equal(on_disk[name], expected), name
    index = json.loads((tmp_path / "pack" / "index.json").read_text())
    assert [(e["name"], e["router_column"]) for e in index["experts"]] == [("expert_3", 0), ("expert_4", 1)]


def test_full_pack_round_trip_keeps_router_rows_of_every_pack(tmp_path):
    """Saving all experts (both packs) and loading them into a bare host reproduces every row, in column order."""
    model = trained_pack_model("block")
    model.save_experts(tmp_path / "pack")
    on_disk = load_file(tmp_path / "pack" / "router.safetensors")
    for name, router in model.routers().items():
        assert torch.equal(on_disk[name], router.full_weight().detach()), name


def _round_trip_case(tmp_path, scope: str) -> None:
    trained = trained_pack_model(scope)
    trained.save_experts(tmp_path / "pack", names=["domain_b"])
    host = build(scope)  # same base pack (same seeds), no domain_b
    with torch.no_grad():
        for name, router in host.routers().items():
            assert torch.equal(router.full_weight(), trained.routers()[name].full_weight()[:3])
    assert host.load_experts(tmp_path / "pack") == ["domain_b"]
    for name, router in host.routers().items():
        assert torch.equal(router.full_weight(), trained.routers()[name].full_weight()), name
    for path, layer in host.expert_layers().items():
        assert torch.equal(layer.stacked_lora_a(), trained.expert_layers()[path].stacked_lora_a()), path
        assert torch.equal(layer.stacked_lora_b(), trained.expert_layers()[path].stacked_lora_b()), path
    audio = random_audio()
    with torch.no_grad():
        expected, got = trained(audio), host(audio)
    assert (expected.expert_usage[..., 3:].sum(-1) > 0).any()  # the loaded experts are really routed to
    torch.testing.assert_close(got.expert_usage, expected.expert_usage)
    torch.testing.assert_close(got.logits, expected.logits)


def test_pack_with_nonzero_router_rows_round_trips_block_scope(tmp_path):
    _round_trip_case(tmp_path, "block")


def test_pack_with_nonzero_router_rows_round_trips_module_scope(tmp_path):
    _round_trip_case(tmp_path, "module")


def test_a_pack_file_holding_three_packs_gives_each_its_own_rows_and_weights(tmp_path):
    """Three packs of sizes 2, 1, 1 saved together: loading must slice rows 0-1, 2 and 3 (an offset or slice bug
    swaps or repeats rows, which a single-pack file never shows)."""
    trained = trained_pack_model("block")  # base (3 experts) + domain_b (2)
    generator = torch.Generator().manual_seed(8)
    for name in ["domain_c", "domain_d"]:
        trained.add_experts(1, pack_name=name)
        with torch.no_grad():
            for layer in trained.expert_layers().values():
                layer.lora_A[-1].copy_(torch.randn(layer.lora_A[-1].shape, generator=generator))
                layer.lora_B[-1].copy_(torch.randn(layer.lora_B[-1].shape, generator=generator) * 0.3)
            for router in trained.routers().values():
                router.weight[-1].copy_(torch.randn(router.weight[-1].shape, generator=generator))
    packs = ["domain_b", "domain_c", "domain_d"]
    trained.save_experts(tmp_path / "pack", names=packs)
    index = json.loads((tmp_path / "pack" / "index.json").read_text())  # the documented pack format
    backbone = trained.config.backbone_config
    save_id = index["save_id"]  # the same id in every file of this save (see atomic_saves.py)
    assert re.fullmatch(r"[0-9a-f]{32}", save_id)
    assert {
        name: load_file_metadata(tmp_path / "pack" / name)
        for name in ("router.safetensors", "expert_3/adapter_model.safetensors")
    } == {
        name: {"format": "pt", "molex_save_id": save_id}
        for name in ("router.safetensors", "expert_3/adapter_model.safetensors")
    }
    assert {k: v for k, v in index.items() if k != "experts"} == {
        "format": "molex-expert-pack",
        "version": 1,
        "save_id": save_id,
        "backbone": {"model_type": "wav2vec2", "hidden_size": backbone.hidden_size,
                     "num_hidden_layers": backbone.num_hidden_layers,
                     "name_or_path": trained.config.adapter.base_model_name_or_path},
    }  # fmt: skip
    modules = sorted(trained.expert_layers())
    assert index["experts"] == [
        {"name": f"expert_{i}", "pack": pack, "router_column": i - 3, "r": 4, "lora_alpha": 16.0, "modules": modules}
        for i, pack in zip(range(3, 7), ["domain_b", "domain_b", "domain_c", "domain_d"], strict=True)
    ]
    host = build("block")
    assert host.load_experts(tmp_path / "pack", trainable=False) == packs
    adapter = host.config.adapter
    assert list(adapter.expert_packs.values())[1:] == [2, 1, 1] and adapter.num_experts == 7
    assert adapter.frozen_packs[-3:] == packs
    for name, router in host.routers().items():
        assert torch.equal(router.full_weight(), trained.routers()[name].full_weight()), name
    for path, layer in host.expert_layers().items():
        assert torch.equal(layer.stacked_lora_a(), trained.expert_layers()[path].stacked_lora_a()), path
        assert torch.equal(layer.stacked_lora_b(), trained.expert_layers()[path].stacked_lora_b()), path
