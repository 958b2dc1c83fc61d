"""Padding never reaches a clip's own numbers (issue 19, item 9): the masked group norm equals group norm on the
clip alone, gradients flow through it (also under activation checkpointing), and an unpadded batch runs the
backbone's original code. The per-family table of scores alone vs padded is in test_model_inputs.py."""

import pytest
import torch
from conftest import FAMILIES, random_audio, randomize_experts, tiny_backbone_config
from test_model_inputs import padded_batch
from transformers import AutoModel

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.model_inputs import padded_lengths
from modeling_molex.padding_invariance import group_norm_per_clip, make_padding_invariant


def build(family: str) -> MoLExForAudioClassification:
    torch.manual_seed(0)
    adapter = MoLExAdapterConfig(num_experts=4, top_k=2, r=4)
    config = MoLExConfig(backbone_config=tiny_backbone_config(family), adapter=adapter, head_dropout=0.0)
    model = MoLExForAudioClassification(config)  # no dropout anywhere: training-mode runs are comparable
    randomize_experts(model, std=0.5)
    return model


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_per_clip_equals_group_norm_on_each_clip_alone(groups):
    """Bit for bit on the real frames; zeros on the padded ones."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(groups, 6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    hidden = torch.randn(3, 6, 11) * 4 + 2
    lengths = torch.tensor([11, 4, 2])  # GroupNorm refuses 1 value per group in training
    out = group_norm_per_clip(hidden, lengths, norm)
    for row, length in enumerate(lengths.tolist()):
        alone = norm(hidden[row : row + 1, :, :length])
        assert torch.equal(out[row : row + 1, :, :length], alone)
        assert not out[row, :, length:].any()


def test_padded_lengths_is_none_without_padding():
    assert padded_lengths(None) is None
    assert padded_lengths(torch.ones(2, 50, dtype=torch.long)) is None
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, 30:] = 0
    assert padded_lengths(mask).tolist() == [50, 30]


# padding_invariance.py patches the wav2vec2-style families; Whisper's waveform encoder (whisper_encoder.py) is
# batch-invariant by construction and has no transformers original taking waveforms (tests/test_whisper_backbone.py
# and the every-family table of tests/test_model_inputs.py cover it).
PATCHED_FAMILIES = [family for family in FAMILIES if family != "whisper"]


@pytest.mark.parametrize("family", PATCHED_FAMILIES)
def test_outside_a_padded_forward_the_patched_backbone_is_the_original(family):
    """Direct backbone calls, and forwards without padding, see transformers' own code: bit-identical outputs."""
    torch.manual_seed(0)
    vanilla = AutoModel.from_config(tiny_backbone_config(family)).eval()
    patched = AutoModel.from_config(tiny_backbone_config(family)).eval()
    patched.load_state_dict(vanilla.state_dict())
    count = make_padding_invariant(patched)
    assert count == (0 if family == "wav2vec2-xlsr" else 1)
    assert make_padding_invariant(patched) == count  # a second call patches nothing twice
    assert patched.state_dict().keys() == vanilla.state_dict().keys()
    audio = random_audio()
    mask = torch.ones_like(audio, dtype=torch.long)
    mask[1, 3000:] = 0
    with torch.no_grad():
        assert torch.equal(patched(audio, attention_mask=mask)[0], vanilla(audio, attention_mask=mask)[0])


def test_an_unpadded_batch_gives_bit_identical_scores_with_and_without_an_all_ones_mask():
    model = build("wav2vec2").eval()
    audio = random_audio(3, 2000)
    with torch.no_grad():
        plain = model(audio).logits
        masked = model(audio, attention_mask=torch.ones_like(audio, dtype=torch.long)).logits
    assert torch.equal(plain, masked)


def _gradients_of_the_short_clip_score(model, clip: torch.Tensor, mate: torch.Tensor | None) -> dict:
    """d score(clip) / d every parameter, with the clip alone or padded beside `mate`."""
    model.zero_grad()
    batch, mask = padded_batch([clip] if mate is None else [clip, mate])
    logits = model(batch, attention_mask=mask if mate is not None else None).logits
    model.detection_score(logits)[0].backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["wav2vec2", "data2vec-audio"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_through_a_padded_batch_equal_the_clip_alone(family, checkpointing):
    """The whole encoder trainable (the comparison's full fine-tuning row): the gradients of the padded clip's score,
    the feature encoder's included, equal those of the clip alone, also when activation checkpointing recomputes the
    layers in backward (outside the forward's context)."""
    model = build(family).train()
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(True)
    model.backbone.feature_extractor._requires_grad = True
    if checkpointing:
        model.activation_checkpointing_enable()
    clip, mate = random_audio(1, 900, seed=1)[0], random_audio(1, 3000, seed=2)[0] * 3
    alone = _gradients_of_the_short_clip_score(model, clip, None)
    in_batch = _gradients_of_the_short_clip_score(model, clip, mate)
    assert alone.keys() == in_batch.keys() and "backbone.feature_extractor.conv_layers.0.conv.weight" in alone
    for name, gradient in alone.items():
        torch.testing.assert_close(in_batch[name], gradient, atol=1e-6, rtol=1e-4, msg=name)
