"""What the model's forward accepts: any clip length from one feature-encoder frame up, masks that describe
right-padding, finite float audio in the obvious shapes; everything else is a clear error (issue 10, items 3, 4, 13)."""

import numpy as np
import pytest
import torch
from conftest import FAMILIES, random_audio, randomize_experts, tiny_backbone_config
from safetensors.torch import load_file, save_file

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.model_inputs import minimum_input_samples


def build(family: str = "wav2vec2-xlsr", **adapter_kwargs) -> MoLExForAudioClassification:
    adapter = MoLExAdapterConfig(**{"num_experts": 4, "top_k": 2, "r": 4, **adapter_kwargs})
    torch.manual_seed(0)
    model = MoLExForAudioClassification(MoLExConfig(backbone_config=tiny_backbone_config(family), adapter=adapter))
    randomize_experts(model, std=0.5)
    return model.eval()


def scores(model, audio: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model.detection_score(model(audio, attention_mask=mask).logits)


def padded_batch(clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(clip.shape[-1] for clip in clips)
    batch = torch.zeros(len(clips), width)
    mask = torch.zeros(len(clips), width, dtype=torch.long)
    for row, clip in enumerate(clips):
        batch[row, : clip.shape[-1]] = clip
        mask[row, : clip.shape[-1]] = 1
    return batch, mask


def test_minimum_length_is_one_frame_of_the_feature_encoder():
    config = tiny_backbone_config("wav2vec2")  # kernels (10, 3), strides (5, 2)
    minimum = minimum_input_samples(config)
    assert minimum == 20
    model = build("wav2vec2")
    assert int(model.backbone._get_feat_extract_output_lengths(minimum)) == 1
    assert int(model.backbone._get_feat_extract_output_lengths(minimum - 1)) == 0
    assert minimum_input_samples(MoLExConfig().backbone_config) == 400  # wav2vec2 / XLS-R: 25 ms at 16 kHz


# Every backbone family (conftest.FAMILIES) and what would make its padded batch differ from the clip alone. Add a
# row with each new family: the test below refuses to run without one.
PADDING_LEAKS = {
    "wav2vec2": "group norm over time in the first conv layer (wav2vec2-base style, feat_extract_norm='group')",
    "wav2vec2-xlsr": "none: layer-norm feature encoder (XLS-R style), every frame normalised on its own",
    "hubert": "group norm over time in the first conv layer (HuBERT-base style)",
    "wavlm": "group norm over time in the first conv layer (WavLM-base style)",
    "data2vec-audio": "its stacked positional convolutions read the padded frames between layers",
    "whisper": "the log-mel clamp at the clip's max - 8, centre padding and both convolutions see padded samples",
}


def test_every_backbone_family_has_a_batch_invariance_row():
    assert set(PADDING_LEAKS) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("extra", [0, 1, 37, 783])
def test_a_clip_scores_the_same_alone_and_in_any_batch(family, extra):
    """The feature encoder's group norm and data2vec-audio's positional convolutions see each clip's own samples and
    frames only (`padding_invariance.py`), so padding never shifts a score, whatever the family."""
    assert family in PADDING_LEAKS, f"add {family!r} to PADDING_LEAKS"
    model = build(family)
    shortest = minimum_input_samples(model.config.backbone_config)  # 20 samples here, 201 for Whisper
    length = shortest + extra
    clip = random_audio(1, length, seed=length)[0]
    alone = scores(model, clip.unsqueeze(0))[0]
    for mates in ([shortest + 5], [4000], [shortest, 1500, 333]):
        clips = [random_audio(1, n, seed=n + 1)[0] * 3 for n in mates]
        for position in (0, len(clips)):
            batch, mask = padded_batch([*clips[:position], clip, *clips[position:]])
            in_batch = scores(model, batch, mask)[position]
            torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-5, msg=f"mates {mates} at {position}")


@pytest.mark.parametrize("batch_mates", [0, 1])
def test_a_clip_shorter_than_one_frame_is_refused_naming_the_minimum(batch_mates):
    model = build("wav2vec2")
    clips = [random_audio(1, 19, seed=1)[0]] + [random_audio(1, 2000, seed=2)[0]] * batch_mates
    batch, mask = padded_batch(clips)
    with pytest.raises(ValueError, match=r"Clip\(s\) \[0\] have 19 real samples.*at least 20 samples"):
        model(batch, attention_mask=mask)


def test_a_row_with_an_all_zero_mask_is_refused():
    model = build("wav2vec2")
    audio = random_audio(2, 1000)
    for batch in (audio, audio[:1]):
        mask = torch.ones_like(batch, dtype=torch.long)
        mask[0] = 0
        with pytest.raises(ValueError, match=r"Clip\(s\) \[0\] have 0 real samples"):
            model(batch, attention_mask=mask)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(1, 500, dtype=torch.long), "must match `input_values`"),
        (torch.ones(2, 1000, dtype=torch.long), "must match `input_values`"),
        (torch.full((1, 1000), 0.5), "only 0 and 1"),
        (torch.full((1, 1000), 2), "only 0 and 1"),
        (torch.cat([torch.zeros(1, 500), torch.ones(1, 500)], dim=1).long(), "not right-padded"),
        (torch.cat([torch.ones(1, 300), torch.zeros(1, 100), torch.ones(1, 600)], dim=1).long(), "not right-padded"),
    ],
)
def test_a_mask_that_does_not_describe_right_padding_is_refused(mask, message):
    model = build("wav2vec2")
    with pytest.raises(ValueError, match=message):
        model(random_audio(1, 1000), attention_mask=mask)


def test_bool_int_and_float_01_masks_give_the_same_score():
    model = build("wav2vec2")
    audio = random_audio(2, 1000)
    mask = torch.ones(2, 1000, dtype=torch.bool)
    mask[1, 700:] = False
    reference = scores(model, audio, mask)
    for variant in (mask.long(), mask.int(), mask.float()):
        assert torch.equal(scores(model, audio, variant), reference)


def test_non_finite_audio_is_refused_by_forward_naming_the_rows():
    model = build("wav2vec2")
    for bad in (float("nan"), float("inf"), float("-inf")):
        audio = random_audio(3, 1000)
        audio[1, 17] = bad
        with pytest.raises(ValueError, match=r"rows \[1\] contain NaN or infinite"):
            model(audio)


def test_forward_accepts_float64_and_the_obvious_shapes():
    model = build("wav2vec2")
    audio = random_audio(2, 1000)
    mask = torch.ones_like(audio, dtype=torch.long)
    mask[1, 600:] = 0
    reference = scores(model, audio, mask)
    assert torch.equal(scores(model, audio.double(), mask), reference)
    assert torch.equal(scores(model, audio.unsqueeze(1), mask.unsqueeze(1)), reference)
    assert torch.equal(scores(model, audio[0]), scores(model, audio[:1]))
    assert torch.equal(scores(model, audio[0], mask[0]), scores(model, audio[:1]))


@pytest.mark.parametrize(
    ("audio", "error", "message"),
    [
        (torch.zeros(2, 2, 1000), ValueError, r"\(samples,\), \(batch, samples\) or \(batch, 1, samples\)"),
        (torch.zeros(1, 1, 1, 1000), ValueError, "mono audio"),
        (torch.zeros(1, 1000, dtype=torch.int16), TypeError, "must be float audio"),
        (torch.zeros(1, 0), ValueError, "no samples"),
    ],
)
def test_unusable_input_is_refused_naming_what_is_expected(audio, error, message):
    with pytest.raises(error, match=message):
        build("wav2vec2")(audio)


def test_feature_extractor_refuses_non_finite_audio():
    extractor = build("wav2vec2").feature_extractor()
    clip = random_audio(1, 1000)[0].numpy()
    clip[5] = float("nan")
    with pytest.raises(ValueError, match="clip 0 contains NaN or infinite"):
        extractor(clip, sampling_rate=16000)
    with pytest.raises(ValueError, match="clip 1 contains NaN or infinite"):
        extractor([random_audio(1, 1000)[0].numpy(), clip], sampling_rate=16000, padding=True)


def test_huge_finite_audio_scores_like_the_same_clip_not_like_silence():
    model = build("wav2vec2")
    extractor = model.feature_extractor()
    clip = random_audio(1, 2000, seed=9)[0].numpy()

    def score(wave):
        inputs = extractor(wave, sampling_rate=16000, return_tensors="pt")
        return scores(model, inputs["input_values"], inputs["attention_mask"])[0]

    silence = score(np.zeros_like(clip))
    normal = score(clip)
    for scale in (1e20, 1e29, 1e35):
        torch.testing.assert_close(score(clip * scale), normal, atol=1e-5, rtol=1e-5)
        assert not torch.isclose(score(clip * scale), silence)


def test_a_head_tensor_missing_from_a_checkpoint_is_an_error_naming_it(tmp_path):
    build("wav2vec2").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["classifier.out_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weight.*classifier\.out_proj\.weight"):
        MoLExForAudioClassification.from_pretrained(tmp_path)
