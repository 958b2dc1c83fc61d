"""transformers and peft surfaces behave as a Hugging Face user expects (issue 11, section 4): the backbone is a real
sub-config, forward honours the standard flags, peft-style switches, and no peft entry point misreads a MoLEx folder."""

import json
import shutil
import threading

import pytest
import torch
from conftest import random_audio, randomize_experts, tiny_backbone_config
from peft import LoraConfig, PeftConfig

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification


def build(family: str = "wav2vec2", **adapter_kwargs) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(**{"num_experts": 4, "top_k": 2, "r": 4, **adapter_kwargs})
    torch.manual_seed(0)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config(family), adapter=adapter))
    randomize_experts(model, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    build().save_pretrained(folder)
    return folder


def test_attn_implementation_and_dtype_reach_the_backbone(saved_model):
    eager = MoLExForAudioClassification.from_pretrained(saved_model, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    assert eager.backbone.config._attn_implementation == "eager"
    half = MoLExForAudioClassification.from_pretrained(saved_model, dtype=torch.bfloat16)
    assert half.backbone.config.dtype == torch.bfloat16
    assert {p.dtype for p in half.backbone.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert half(random_audio()).logits.dtype == torch.bfloat16
    config = MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), attn_implementation="eager")
    assert config.backbone_config._attn_implementation == "eager"


def test_return_dict_false_gives_the_output_as_a_tuple():
    model = build()
    audio, labels = random_audio(), torch.tensor([0, 1])
    with torch.no_grad():
        as_dict = model(audio, labels=labels)
        as_tuple = model(audio, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    with torch.no_grad():
        assert torch.equal(model(audio, return_dict=False)[0], as_dict.logits)


def test_output_hidden_states_and_attentions(saved_model):
    model = MoLExForAudioClassification.from_pretrained(saved_model, attn_implementation="eager").eval()
    audio = random_audio()
    with torch.no_grad():
        plain = model(audio)
        full = model(audio, output_hidden_states=True, output_attentions=True)
    assert plain.hidden_states is None and plain.attentions is None
    assert len(full.hidden_states) == 3 and len(full.attentions) == 2
    frames = full.hidden_states[0].shape[1]
    assert full.attentions[0].shape == (2, 2, frames, frames)
    torch.testing.assert_close(full.attentions[0].sum(-1), torch.ones(2, 2, frames))
    assert torch.equal(full.logits, plain.logits)


def test_unknown_forward_arguments_are_refused():
    with pytest.raises(TypeError, match="output_router_logits"):
        build()(random_audio(), output_router_logits=True)


def test_disable_adapter_runs_the_frozen_backbone_alone_in_this_thread_only():
    model = build()
    audio = random_audio()
    with torch.no_grad():
        with_experts = model(audio, output_hidden_states=True)
        with model.disable_adapter():
            without = model(audio, output_hidden_states=True)
            other_thread = {}
            thread = threading.Thread(target=lambda: other_thread.update(out=model(audio).logits))
            thread.start()
            thread.join()
        restored = model(audio).logits
        randomize_experts(model, std=0.0)  # B = 0: every expert adds nothing
        zero_delta = model(audio, output_hidden_states=True)
    assert not torch.equal(with_experts.logits, without.logits)
    torch.testing.assert_close(without.hidden_states[-1], zero_delta.hidden_states[-1])
    assert torch.equal(restored, with_experts.logits)
    assert torch.equal(other_thread["out"], with_experts.logits)


@pytest.mark.parametrize("scope", ["block", "module"])  # module scope: each expert layer's own router gets the mask
def test_set_active_packs_routes_only_to_their_experts(scope):
    model = build(top_k=1, router_scope=scope)
    model.add_experts(2, pack_name="domain_b")
    randomize_experts(model, seed=4)
    audio = random_audio(3, 2000)
    with torch.no_grad():
        everything = model(audio)
        model.set_active_packs("domain_b")
        only_b = model(audio)
        model.set_active_packs(None)
        again = model(audio)
    assert model.active_packs == ["base", "domain_b"]
    assert only_b.expert_usage[..., :4].sum() == 0 and (only_b.expert_usage[..., 4:].sum(-1) == 1).all()
    assert only_b.router_probs[..., :4].sum() == 0
    assert torch.equal(again.logits, everything.logits)
    with pytest.raises(ValueError, match="Unknown expert pack"):
        model.set_active_packs(["nope"])


def test_set_active_packs_refuses_fewer_experts_than_top_k():
    model = build(top_k=2)
    model.add_experts(1, pack_name="small")
    with pytest.raises(ValueError, match="fewer than `top_k`=2"):
        model.set_active_packs("small")


def test_peft_reads_each_expert_and_no_peft_entry_point_misreads_the_pack(saved_model):
    assert isinstance(PeftConfig.from_pretrained(str(saved_model / "experts" / "expert_0")), LoraConfig)
    for folder, subfolder in ((saved_model, None), (saved_model, "experts"), (saved_model / "experts", None)):
        try:
            PeftConfig.from_pretrained(str(folder), subfolder=subfolder)
        except KeyError as error:  # the failure of a pack-level `adapter_config.json` with peft_type "MOLEX"
            pytest.fail(f"PeftConfig.from_pretrained({folder}, subfolder={subfolder}) raised KeyError {error}")
        except (ValueError, OSError):
            pass  # "no adapter config here" is the right answer for a MoLEx folder


def test_a_pack_saved_under_the_old_name_still_loads(saved_model, tmp_path):
    shutil.copytree(saved_model / "experts", tmp_path / "pack")
    (tmp_path / "pack" / "molex_pack_config.json").rename(tmp_path / "pack" / "adapter_config.json")
    data = json.loads((tmp_path / "pack" / "adapter_config.json").read_text())
    data["expert_packs"] = {"shipped": data["expert_packs"]["base"]}
    (tmp_path / "pack" / "adapter_config.json").write_text(json.dumps(data))
    index = json.loads((tmp_path / "pack" / "index.json").read_text())
    for entry in index["experts"]:
        entry["pack"] = "shipped"
    (tmp_path / "pack" / "index.json").write_text(json.dumps(index))
    model = build()
    assert model.load_experts(tmp_path / "pack") == ["shipped"]
    assert model.config.adapter.expert_packs == {"base": 4, "shipped": 4}
