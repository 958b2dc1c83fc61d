"""What `load_experts` opens and trusts: only regular files inside the pack (no links out, no expert linked to another,
no FIFO that would hang the load), files that agree with each other (index vs pack config vs each expert's PEFT
config, one save), JSON of bounded depth, finite tensors. Each refusal names the file and leaves the model as it was;
the Hugging Face cache's own layout (every file a link into the repo's blobs/) still loads."""

import contextlib
import json
import os
import shutil
import threading

import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config
from safetensors.torch import load_file, save_file

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.novelty import load_routing_signatures


LAYER = "encoder.layers.1.feed_forward.output_dense"


def build(seed: int = 0) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(num_experts=3, top_k=2, r=4, lora_alpha=8.0)
    torch.manual_seed(seed)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), adapter=adapter))
    randomize_experts(model, seed=seed)
    return model


@pytest.fixture
def pack(tmp_path):
    source = build(seed=1)
    source.add_experts(2, pack_name="domain")
    randomize_experts(source, seed=2)
    source.save_experts(tmp_path / "pack", names=["domain"])
    return tmp_path / "pack"


@contextlib.contextmanager
def fifo_watchdog(fifos: list, seconds: float = 20.0):
    """Fail instead of hanging the suite when the block opens a FIFO: after `seconds`, open each FIFO's write end
    (which releases a reader blocked in `open`, whatever language it is written in) and report the hang."""
    hung = []

    def release():
        for fifo in fifos:
            with contextlib.suppress(OSError):  # ENXIO: nobody is waiting on this one
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                hung.append(str(fifo))

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        assert not hung, f"the load blocked on opening {hung}"


def refused(pack, exception=ValueError, match=None, fifos=()):
    """Load `pack` into a fresh model, expect a refusal, and check the model did not change."""
    host = build()
    before = {key: value.clone() for key, value in host.state_dict().items()}
    adapter_before = host.config.adapter.to_dict()
    with fifo_watchdog(list(fifos)), pytest.raises(exception, match=match) as error:
        host.load_experts(pack)
    assert host.config.adapter.to_dict() == adapter_before
    assert host.state_dict().keys() == before.keys()
    assert all(torch.equal(host.state_dict()[key], value) for key, value in before.items())
    return str(error.value)


@pytest.mark.parametrize(
    "name", ["router.safetensors", "index.json", "molex_pack_config.json", "expert_3/adapter_model.safetensors"]
)
def test_a_fifo_in_the_pack_is_refused_without_opening_it(pack, name):
    os.unlink(pack / name)
    os.mkfifo(pack / name)
    message = refused(pack, fifos=[pack / name])
    assert message == f"{pack / name} is a FIFO (named pipe), not a regular file; it is not opened"


@pytest.mark.parametrize("name", ["router.safetensors", "expert_4/adapter_model.safetensors", "index.json"])
def test_a_file_linked_out_of_the_pack_is_refused(pack, tmp_path, name):
    outside = tmp_path / "elsewhere" / os.path.basename(name)
    outside.parent.mkdir()
    shutil.move(pack / name, outside)  # a complete, valid file: only where it lives is wrong
    os.symlink(outside, pack / name)
    message = refused(pack)
    assert message.startswith(f"{pack / name} is a symbolic link (to {str(outside)!r}); only regular files inside")


def test_an_expert_folder_linked_to_another_expert_is_refused(pack):
    shutil.rmtree(pack / "expert_4")
    os.symlink("expert_3", pack / "expert_4")
    message = refused(pack)
    assert message.startswith(f"{pack / 'expert_4'} is a symbolic link (to 'expert_3')")


def test_an_expert_file_linked_to_another_experts_file_is_refused(pack):
    os.unlink(pack / "expert_4" / "adapter_model.safetensors")
    os.symlink("../expert_3/adapter_model.safetensors", pack / "expert_4" / "adapter_model.safetensors")
    refused(pack, match="is a symbolic link")
    os.unlink(pack / "expert_4" / "adapter_model.safetensors")
    os.link(pack / "expert_3" / "adapter_model.safetensors", pack / "expert_4" / "adapter_model.safetensors")
    message = refused(pack)
    assert message == (
        f"{pack / 'expert_4' / 'adapter_model.safetensors'} is the same file as "
        f"{pack / 'expert_3' / 'adapter_model.safetensors'} (a hard link): each expert needs its own weights"
    )


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        (
            "index.json",
            lambda index: index["experts"][1].update(r=8),
            "{index} and {config} disagree on `r` of expert 'expert_4': 8 vs 4",
        ),
        (
            "index.json",
            lambda index: index["experts"][0].update(lora_alpha=16.0),
            "{index} and {config} disagree on `lora_alpha` of expert 'expert_3': 16.0 vs 8.0",
        ),
        (
            "index.json",
            lambda index: index["experts"][0]["modules"].append("encoder.layers.0.feed_forward.gate_proj"),
            "{index} and {config} disagree on the modules of expert 'expert_3': "
            "['encoder.layers.0.feed_forward.gate_proj'] not selected by `target_modules`",
        ),
        (
            "index.json",
            lambda index: index["experts"][1]["modules"].pop(),
            "{pack}/expert_4/adapter_config.json and {index} disagree on the modules of expert 'expert_4' "
            "(`target_modules` vs `modules`)",
        ),
        (
            "index.json",
            lambda index: index["experts"][1].update(pack="other"),
            "{index} and {config} disagree on `pack` of router column 1: the index puts expert 'expert_4' in 'other'",
        ),
        (
            "expert_4/adapter_config.json",
            lambda peft: peft.update(r=2),
            "{pack}/expert_4/adapter_config.json and {config} disagree on `r` of expert 'expert_4': 2 vs 4",
        ),
        (
            "molex_pack_config.json",
            lambda config: config.update(expert_packs={"domain": 3}),
            "{index}: `experts` lists 2 experts, the pack config declares 3 (`expert_packs` of {config})",
        ),
    ],
)
def test_index_and_pack_config_must_agree_naming_both_files_and_the_field(pack, file, edit, message):
    _edit_json(pack / file, edit)
    expected = message.format(index=pack / "index.json", config=pack / "molex_pack_config.json", pack=pack)
    assert refused(pack).startswith(expected)


def test_the_model_still_refuses_a_pack_for_other_target_modules(pack):
    """The pack config and the host disagree (not the pack's files among themselves): the host's check speaks."""
    _edit_json(pack / "molex_pack_config.json", lambda config: config.update(target_modules=["q_proj"]))
    _edit_json(pack / "index.json", lambda index: [e.update(modules=[m for m in e["modules"] if "q_proj" in m])
                                                   for e in index["experts"]])  # fmt: skip
    assert "`target_modules` is ['q_proj'] but this model has" in refused(pack)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("name", ["index.json", "molex_pack_config.json", "expert_3/adapter_config.json"])
def test_deeply_nested_json_is_refused_naming_the_file(pack, name):
    data = json.loads((pack / name).read_text())
    (pack / name).write_text(json.dumps(data)[:-1] + f', "deep": {_nested(100_000)}}}')
    message = refused(pack)
    assert message == f"{pack / name}: JSON nested 100001 levels deep, more than the 64 a MoLEx file may use"


def test_deeply_nested_routing_signatures_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "routing_signatures.json"
    path.write_text('{"threshold": 0.1, "known": {"A01": ' + _nested(50_000) + "}}")
    with pytest.raises(ValueError) as error:
        load_routing_signatures(path)
    assert str(error.value) == (
        f"{path}: cannot read routing signatures: JSON nested 50002 levels deep, more than the 64 a MoLEx file may use"
    )


def test_brackets_inside_strings_do_not_count_as_nesting(pack):
    _edit_json(pack / "index.json", lambda index: index.update(note="[" * 500 + '\\"{' * 100))
    assert build().load_experts(pack) == ["domain"]


@pytest.mark.parametrize(
    ("file", "tensor", "value"),
    [
        ("router.safetensors", "layer_0", float("nan")),
        ("expert_3/adapter_model.safetensors", f"base_model.model.{LAYER}.lora_A.weight", float("inf")),
        ("expert_4/adapter_model.safetensors", f"base_model.model.{LAYER}.lora_B.weight", float("nan")),
    ],
)
def test_a_non_finite_pack_tensor_is_refused_naming_file_and_tensor(pack, file, tensor, value):
    from safetensors import safe_open

    with safe_open(str(pack / file), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(pack / file)
    tensors[tensor][0, 0] = value
    save_file(tensors, pack / file, metadata=metadata)  # same save id: only the value is wrong
    assert refused(pack) == (
        f"{pack / file}: tensor {tensor!r} holds 1 non-finite value(s) (NaN or infinity); refused, since they would "
        "make every score NaN"
    )


def test_a_router_file_from_another_save_is_refused_naming_the_files(pack, tmp_path):
    other = build(seed=5)
    other.add_experts(2, pack_name="domain")
    randomize_experts(other, seed=6)
    other.save_experts(tmp_path / "other", names=["domain"])
    shutil.copy(tmp_path / "other" / "router.safetensors", pack / "router.safetensors")
    message = refused(pack)
    assert message.startswith(f"{pack}: its files come from different saves (index.json: ")
    assert "router.safetensors: " in message and "expert_3/adapter_model.safetensors: " in message


def test_a_pack_from_the_hub_cache_loads_through_its_links_into_blobs(pack, tmp_path):
    """The layout huggingface_hub writes: snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    repo = tmp_path / "hub" / "models--me--pack"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    for path in sorted(p for p in pack.rglob("*") if p.is_file()):
        relative = path.relative_to(pack)
        blob = repo / "blobs" / f"blob{len(os.listdir(repo / 'blobs'))}"
        shutil.copy(path, blob)
        (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, (snapshot / relative).parent), snapshot / relative)
    reference = build()
    reference.load_experts(pack)
    host = build()
    assert host.load_experts(snapshot) == ["domain"]
    for key, value in reference.state_dict().items():
        assert torch.equal(host.state_dict()[key], value), key
    os.unlink(snapshot / "router.safetensors")  # a link out of the repo's blobs is still refused
    os.symlink(pack / "router.safetensors", snapshot / "router.safetensors")
    assert refused(snapshot).startswith(f"{snapshot / 'router.safetensors'} is a symbolic link")
