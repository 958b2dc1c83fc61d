"""The model's life cycle, pinned field by field: what `from_backbone` loads, freezes and records, what
`save_pretrained` writes (atomically, also over an earlier save), what `from_pretrained` restores or refuses, and
`load_backbone_state_dict`'s strictness. Each test breaks when one of these silently changes."""

import ast
import os
import re

import pytest
import torch
from conftest import random_audio, randomize_experts, tiny_backbone_config
from safetensors.torch import load_file, save_file
from transformers import AutoModel, Wav2Vec2FeatureExtractor

import modeling_molex.model_folder as model_folder
import modeling_molex.modeling_molex as modeling
from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.heads import MeanPooling, WeightedLayerSum
from modeling_molex.modeling_molex import _is_molex_parameter


ADAPTER = {"num_experts": 2, "top_k": 1, "r": 2}


@pytest.fixture(scope="module")
def augmented_backbone(tmp_path_factory) -> str:
    """A tiny wav2vec2 saved with SpecAugment and layerdrop ON and a preprocessor that does not normalise."""
    path = tmp_path_factory.mktemp("augmented") / "backbone"
    config = tiny_backbone_config("wav2vec2")
    config.layerdrop, config.mask_time_prob, config.apply_spec_augment = 0.1, 0.05, True
    torch.manual_seed(7)
    AutoModel.from_config(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(path)
    return str(path)


def _unwrapped(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MoLEx backbone keys -> vanilla AutoModel keys (expert wrappers dropped)."""
    return {k.replace(".base_layer.", "."): v for k, v in state_dict.items() if not _is_molex_parameter(k)}


def test_from_backbone_loads_the_saved_weights_freezes_them_and_switches_augmentation_off(augmented_backbone):
    adapter = {**ADAPTER, "lora_alpha": 4.0}
    model = MoLExForAudioClassification.from_backbone(
        augmented_backbone, adapter=adapter, backbone_kwargs={"final_dropout": 0.3}, pooling="mean"
    )
    vanilla = AutoModel.from_pretrained(augmented_backbone).state_dict()
    ours = _unwrapped(model.backbone.state_dict())
    assert set(ours) == set(vanilla)
    for key, tensor in vanilla.items():
        assert torch.equal(ours[key], tensor), key
    backbone_config = model.config.backbone_config
    assert backbone_config.layerdrop == 0.0 and backbone_config.apply_spec_augment is False
    assert model.backbone.config.final_dropout == 0.3 and backbone_config.final_dropout == 0.3
    for name, parameter in model.backbone.named_parameters():
        assert parameter.requires_grad == _is_molex_parameter(name), name
        if ".lora_B." in name:
            assert not parameter.any(), f"{name}: experts must start at zero delta"
    assert model.config.backbone_name_or_path == augmented_backbone
    assert model.config.adapter.base_model_name_or_path == augmented_backbone
    assert model.config.adapter.lora_alpha == 4.0 and "base_model_name_or_path" not in adapter
    assert model.config.pooling == "mean" and isinstance(model.pooling, MeanPooling)
    assert model.config.normalize_audio is False  # the backbone's own preprocessor does not normalise


def test_from_backbone_keeps_the_callers_adapter_and_an_explicit_normalize_audio(augmented_backbone):
    adapter = MoLExAdapterConfig(**ADAPTER)
    model = MoLExForAudioClassification.from_backbone(augmented_backbone, adapter=adapter, normalize_audio=True)
    assert adapter.base_model_name_or_path is None
    assert model.config.adapter.base_model_name_or_path == augmented_backbone
    assert model.config.normalize_audio is True


def test_from_backbone_without_a_preprocessor_normalises(tiny_backbone_dirs):
    path = tiny_backbone_dirs["hubert"]
    assert not os.path.exists(os.path.join(path, "preprocessor_config.json"))
    model = MoLExForAudioClassification.from_backbone(path, adapter=ADAPTER)
    assert model.config.normalize_audio is True and model.feature_extractor().do_normalize is True


def test_from_backbone_refuses_a_backbone_kwarg_that_is_not_a_config_field(augmented_backbone):
    with pytest.raises(ValueError, match=r"^`backbone_kwargs` key 'nonsense' is not a field of Wav2Vec2Config$"):
        MoLExForAudioClassification.from_backbone(augmented_backbone, adapter=ADAPTER, backbone_kwargs={"nonsense": 1})


def _built(**config_kwargs) -> MoLExForAudioClassification:
    torch.manual_seed(0)
    config = MoLExConfig(
        backbone_config=tiny_backbone_config("wav2vec2"), adapter=MoLExAdapterConfig(**ADAPTER), **config_kwargs
    )
    return MoLExForAudioClassification(config).eval()


@pytest.mark.parametrize("use_weighted_layer_sum", [True, False])
def test_logits_come_from_the_layer_sum_only_when_configured(use_weighted_layer_sum):
    model = _built(use_weighted_layer_sum=use_weighted_layer_sum, pooling="mean")
    if use_weighted_layer_sum:
        assert isinstance(model.layer_sum, WeightedLayerSum)
        assert model.layer_sum.layer_weights.shape == (3,)  # embeddings + 2 layers
        with torch.no_grad():
            model.layer_sum.layer_weights.copy_(torch.tensor([3.0, -1.0, 0.5]))
    else:
        assert model.layer_sum is None
    audio = random_audio()
    with torch.no_grad():
        output = model(audio, output_hidden_states=True)
        states = output.hidden_states
        hidden = model.layer_sum(states) if use_weighted_layer_sum else states[-1]
        expected = model.classifier(model.pooling(hidden, None))
    assert torch.equal(output.logits, expected)


def test_hidden_states_and_attentions_follow_the_call_then_the_config():
    model = _built()
    model.config._attn_implementation = "eager"  # attentions need the eager kernel
    model.backbone.config._attn_implementation = "eager"
    audio = random_audio()
    with torch.no_grad():
        assert model(audio).hidden_states is None and model(audio).attentions is None
        assert len(model(audio, output_hidden_states=True).hidden_states) == 3
        assert len(model(audio, output_attentions=True).attentions) == 2
        model.config.output_hidden_states = True
        model.config.output_attentions = True
        both = model(audio)
        assert len(both.hidden_states) == 3 and len(both.attentions) == 2
        neither = model(audio, output_hidden_states=False, output_attentions=False)
        assert neither.hidden_states is None and neither.attentions is None


def test_feature_extractor_matches_the_config():
    model = _built(normalize_audio=False, sampling_rate=8000)
    extractor = model.feature_extractor()
    assert extractor.feature_size == 1 and extractor.padding_value == 0.0
    assert extractor.sampling_rate == 8000 and extractor.do_normalize is False
    assert extractor.return_attention_mask is True
    clips = [random_audio(1, 3000, seed=1)[0].numpy(), random_audio(1, 2000, seed=2)[0].numpy()]
    batch = extractor(clips, sampling_rate=8000, padding=True, return_tensors="pt")
    assert batch["input_values"].shape == (2, 3000)
    assert torch.equal(batch["input_values"][1, 2000:], torch.zeros(1000))
    assert batch["attention_mask"][1].sum() == 2000
    assert torch.equal(batch["input_values"][0], torch.from_numpy(clips[0]).to(batch["input_values"].dtype))


def test_gradient_checkpointing_switches_on_and_off():
    model = _built()
    flags = lambda: {m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")}  # noqa: E731
    model.gradient_checkpointing_enable()
    assert flags() == {True}
    model.gradient_checkpointing_disable()
    assert flags() == {False}


# ----- saving and loading ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_model(augmented_backbone) -> MoLExForAudioClassification:
    model = MoLExForAudioClassification.from_backbone(augmented_backbone, adapter=ADAPTER, pooling="mean").eval()
    randomize_experts(model)
    return model


def test_save_writes_exactly_the_hub_files_and_reloads_bit_equal(trained_model, tmp_path):
    target = tmp_path / "model"
    trained_model.save_pretrained(target, max_shard_size="40KB")  # kwargs reach transformers: a sharded checkpoint
    names = set(os.listdir(target))
    assert "model.safetensors.index.json" in names and "model.safetensors" not in names
    shards = {n for n in names if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", n)}
    assert len(shards) > 1
    assert names - shards == {
        "config.json",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "experts",
        *[n for n in names if n.endswith(".py")],
    }
    assert set(os.listdir(tmp_path)) == {"model"}, "the staging folder must be gone"
    reloaded, info = MoLExForAudioClassification.from_pretrained(target, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    saved_config, loaded_config = trained_model.config.to_dict(), reloaded.config.to_dict()
    assert loaded_config.pop("_name_or_path") == str(target)
    saved_config.pop("_name_or_path")
    assert loaded_config == saved_config
    theirs = trained_model.state_dict()
    ours = reloaded.state_dict()
    assert set(ours) == set(theirs)
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
    assert isinstance(MoLExForAudioClassification.from_pretrained(target), MoLExForAudioClassification)


def test_saving_over_an_earlier_save_replaces_it(trained_model, tmp_path):
    target = tmp_path / "model"
    trained_model.save_pretrained(target)
    stale = target / "experts" / "stale.txt"
    stale.write_text("from an earlier save")
    other = _built()
    other.save_pretrained(target)
    assert not stale.exists()
    reloaded = MoLExForAudioClassification.from_pretrained(target)
    assert reloaded.config.backbone_name_or_path is None
    for key, tensor in other.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key


def test_save_on_a_non_main_process_writes_nothing(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path / "model", is_main_process=False)
    assert not (tmp_path / "model").exists()
    trained_model.save_pretrained(tmp_path / "positional", False)  # transformers' second positional parameter
    assert not (tmp_path / "positional").exists()


def test_a_failed_save_leaves_no_folder_and_stages_next_to_the_target(trained_model, tmp_path, monkeypatch):
    seen = {}

    def failing_pack(model, directory, *args):
        staging = os.path.dirname(directory)
        seen["staging"] = staging
        seen["staged"] = sorted(os.listdir(staging))
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_folder, "save_expert_pack", failing_pack)
    with pytest.raises(RuntimeError, match="disk full"):
        trained_model.save_pretrained(tmp_path / "model")
    assert os.path.dirname(seen["staging"]) == str(tmp_path)
    assert os.path.basename(seen["staging"]).startswith(".molex-save-")
    assert "config.json" in seen["staged"] and "preprocessor_config.json" in seen["staged"]
    assert os.listdir(tmp_path) == []


def _drop_weights(folder, count: int) -> list[str]:
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    dropped = sorted(k for k in tensors if k.startswith("backbone.") and "base_layer" in k)[:count]
    save_file({k: v for k, v in tensors.items() if k not in dropped}, path, metadata={"format": "pt"})
    return dropped


def test_from_pretrained_names_the_folder_and_the_missing_weights(trained_model, tmp_path):
    folder = str(tmp_path / "model")
    trained_model.save_pretrained(folder)
    dropped = _drop_weights(folder, 10)
    for call in (
        lambda: MoLExForAudioClassification.from_pretrained(folder),
        lambda: MoLExForAudioClassification.from_pretrained(pretrained_model_name_or_path=folder),
    ):
        with pytest.raises(ValueError) as raised:
            call()
        message = str(raised.value)
        assert message.startswith(f"{folder}: the checkpoint lacks 10 weight(s) that config.json declares: ")
        listed = ast.literal_eval(message.split("declares: ", 1)[1])
        assert listed == dropped[:8]


# ----- backbone weights and parameter names ---------------------------------------------------------------------


def test_molex_parameters_are_exactly_the_experts_and_routers():
    model = _built()
    names = list(model.backbone.state_dict())
    molex = {n for n in names if _is_molex_parameter(n)}
    assert molex == {n for n in names if ".lora_A." in n or ".lora_B." in n or ".molex_router." in n}
    assert any(".lora_A." in n for n in molex) and any(".lora_B." in n for n in molex)
    assert any("router" in n for n in molex)
    assert not _is_molex_parameter("encoder.layers.0.attention.k_proj.base_layer.weight")
    assert not _is_molex_parameter("feature_projection.projection.weight")
    assert _is_molex_parameter("encoder.layers.1.molex_router.weight.0")


def test_load_backbone_state_dict_loads_vanilla_weights_under_the_wrappers(tiny_backbone_dirs):
    model = _built()
    randomize_experts(model)
    experts_before = {k: v.clone() for k, v in model.backbone.state_dict().items() if _is_molex_parameter(k)}
    vanilla = AutoModel.from_pretrained(tiny_backbone_dirs["wav2vec2"]).state_dict()
    model.load_backbone_state_dict(vanilla)
    ours = model.backbone.state_dict()
    for key, tensor in _unwrapped(ours).items():
        assert torch.equal(tensor, vanilla[key]), key
    for key, tensor in experts_before.items():
        assert torch.equal(ours[key], tensor), key


def test_load_backbone_state_dict_refuses_foreign_and_incomplete_weights(tiny_backbone_dirs):
    model = _built()
    vanilla = AutoModel.from_pretrained(tiny_backbone_dirs["wav2vec2"]).state_dict()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    foreign = {**vanilla, "encoder.layers.0.attention.k_proj.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"^Backbone weight 'encoder.layers.0.attention.k_proj.extra' has no place"):
        model.load_backbone_state_dict(foreign)
    incomplete = {k: v for k, v in vanilla.items() if k != "encoder.layers.1.attention.q_proj.weight"}
    with pytest.raises(ValueError) as raised:
        model.load_backbone_state_dict(incomplete)
    assert str(raised.value) == (
        "Backbone checkpoint lacks 1 weights, e.g. ['encoder.layers.1.attention.q_proj.base_layer.weight']"
    )
    dropped = sorted(k for k in vanilla if k.startswith("encoder.layers.0.attention."))  # 8 weights
    with pytest.raises(ValueError) as raised:
        model.load_backbone_state_dict({k: v for k, v in vanilla.items() if k not in dropped})
    prefix = f"Backbone checkpoint lacks {len(dropped)} weights, e.g. "
    assert len(dropped) > 5 and str(raised.value).startswith(prefix)
    assert len(ast.literal_eval(str(raised.value)[len(prefix) :])) == 5
    for key, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, before[key]), f"{key} changed by a refused load"


def test_push_to_hub_hands_everything_to_the_one_commit_upload(monkeypatch):
    model = _built()
    calls = []
    monkeypatch.setattr(modeling, "push_model_in_one_commit", lambda *a, **k: calls.append((a, k)) or "commit-url")
    assert model.push_to_hub("me/molex", commit_message="first", private=True) == "commit-url"
    assert calls == [((model, "me/molex"), {"commit_message": "first", "private": True})]
