"""Whisper's encoder as a MoLEx backbone (tiny random WhisperConfig): the front end equals WhisperFeatureExtractor,
the wrapper equals transformers' WhisperEncoder, identity at init, batch invariance, loading from Whisper folders,
and the documented relation between a 2 s crop and the same audio padded to 30 s. The per-family tables
(test_modeling.py, test_experts_io.py, test_remote_code.py) cover the rest."""

import os

import numpy as np
import pytest
import torch
from conftest import randomize_experts, tiny_backbone_config
from fake_hub import hub  # noqa: F401  (the fake Hub fixture)
from safetensors.torch import load_file, save_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from modeling_molex import MoLExAdapterConfig, MoLExConfig, MoLExForAudioClassification
from modeling_molex.routing_state import routing_scope
from modeling_molex.whisper_encoder import WhisperWaveformEncoder, whisper_mel_filters


ADAPTER = {"num_experts": 4, "top_k": 2, "r": 4}


def audio(samples: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Noise plus a tone, loudest in the middle and still at half level at the end (so that the max of the
    clamp at max - 8 lies inside the clip, not at its edges)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16_000
    envelope = 1.0 - 0.5 * np.abs(np.linspace(-1.0, 1.0, samples))
    waves = envelope * (0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal((batch, samples)))
    return torch.from_numpy(waves.astype(np.float32))


def build(**adapter_kwargs) -> MoLExForAudioClassification:
    torch.manual_seed(0)
    config = MoLExConfig(backbone_config=tiny_backbone_config("whisper"), adapter={**ADAPTER, **adapter_kwargs})
    return MoLExForAudioClassification(config).eval()


@pytest.mark.parametrize(  # 1, 2, 131 (odd), 200, 200 mel frames; digital silence reaches the clamp at max - 8,
    # and in a very quiet clip (max - 8 below the floor) the log floor 1e-10
    ("samples", "silent_from", "scale"),
    [(201, None, 1), (401, None, 1), (20_970, None, 1), (32_000, None, 1), (32_080, 16_000, 1), (8_000, 4_000, 1e-4)],
)
def test_front_end_equals_the_feature_extractors_numpy_path(samples, silent_from, scale):
    wave = audio(samples, seed=samples) * scale
    if silent_from is not None:
        wave[:, silent_from:] = 0.0
    expected = WhisperFeatureExtractor(feature_size=80)._np_extract_fbank_features(wave.numpy(), "cpu")
    front_end = WhisperWaveformEncoder(tiny_backbone_config("whisper")).log_mel
    ours, frame_mask = front_end(wave, torch.tensor([samples]))
    assert ours.shape == expected.shape == (1, 80, samples // 160) and bool(frame_mask.all())
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-5, rtol=0)  # numpy float64 FFT vs torch float32


def test_front_end_on_30_s_equals_the_feature_extractors_default_padded_call():
    wave = audio(480_000, seed=1)[0].numpy()
    expected = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16_000, return_tensors="pt")
    ours, _ = WhisperWaveformEncoder(tiny_backbone_config("whisper")).log_mel(
        torch.from_numpy(wave)[None], torch.tensor([480_000])
    )
    assert expected.input_features.shape == ours.shape == (1, 80, 3000)
    torch.testing.assert_close(ours, expected.input_features, atol=1e-5, rtol=0)


def test_wrapper_equals_transformers_whisper_encoder_on_the_same_mel():
    """WhisperEncoder itself only runs on exactly 2 x max_source_positions mel frames: give it a config with 100
    positions (the first 100 rows of the same sinusoids) and the 2 s crop's mel."""
    torch.manual_seed(0)
    ours = WhisperWaveformEncoder(tiny_backbone_config("whisper")).eval()
    reference = WhisperEncoder(WhisperConfig(**{**ours.config.to_dict(), "max_source_positions": 100})).eval()
    state = {key.removeprefix("encoder."): value for key, value in ours.state_dict().items()}
    state["embed_positions.weight"] = state["embed_positions.weight"][:100]
    reference.load_state_dict(state)
    waves = audio(32_000, batch=2)
    with torch.no_grad():
        mel, _ = ours.log_mel(waves, torch.tensor([32_000, 32_000]))
        expected = reference(mel, output_hidden_states=True)
        got = ours(waves, output_hidden_states=True)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3  # blocks' input + 2 blocks
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.last_hidden_state, got.hidden_states[-1], atol=0, rtol=0)


def test_identity_at_init_and_disable_adapter_equal_the_frozen_encoder(tiny_backbone_dirs):
    folder = tiny_backbone_dirs["whisper"]
    model = MoLExForAudioClassification.from_backbone(folder, adapter=MoLExAdapterConfig(**ADAPTER)).eval()
    frozen = WhisperWaveformEncoder.from_pretrained(folder).eval()
    waves, mask = audio(20_000, batch=2), torch.ones(2, 20_000, dtype=torch.long)
    mask[1, 15_000:] = 0

    def hidden_states(backbone):
        with torch.no_grad(), routing_scope(model._frame_mask(waves, mask)):
            return backbone(waves, attention_mask=mask, output_hidden_states=True).hidden_states

    with torch.no_grad():
        at_init = model(waves, attention_mask=mask).logits
    for a, b in zip(hidden_states(model.backbone), hidden_states(frozen), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    randomize_experts(model)
    with torch.no_grad():
        assert (model(waves, attention_mask=mask).logits - at_init).abs().max() > 1e-4
    with model.disable_adapter():
        for a, b in zip(hidden_states(model.backbone), hidden_states(frozen), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(model(waves, attention_mask=mask).logits, at_init, atol=1e-6, rtol=1e-6)


def test_from_backbone_reads_whisper_model_and_conditional_generation_folders_alike(tmp_path):
    """`WhisperModel` saves `encoder.*`, `WhisperForConditionalGeneration` `model.encoder.*`; both load, with the
    decoder ignored, and a folder without encoder weights is refused instead of random-initialised."""
    torch.manual_seed(3)
    full = WhisperForConditionalGeneration(tiny_backbone_config("whisper"))
    full.save_pretrained(tmp_path / "generation")
    full.model.save_pretrained(tmp_path / "model")
    expected = {k.removeprefix("model."): v for k, v in full.state_dict().items() if k.startswith("model.encoder.")}
    for layout in ("generation", "model"):
        model = MoLExForAudioClassification.from_backbone(str(tmp_path / layout), adapter=ADAPTER)
        assert model.config.backbone_config.model_type == "whisper" and not model.config.normalize_audio
        assert model.config.adapter.target_modules == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
        own = model.backbone.state_dict()
        for key, value in expected.items():
            wrapped = (
                key
                if key in own
                else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
            )
            assert torch.equal(own[wrapped], value), (layout, key)
        frozen = [n for n, p in model.backbone.named_parameters() if ".lora_" not in n and "molex_router" not in n]
        assert frozen and not any(dict(model.backbone.named_parameters())[n].requires_grad for n in frozen)
    weights = load_file(tmp_path / "generation" / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if ".encoder." not in k}, tmp_path / "generation" / "model.safetensors"
    )
    with pytest.raises(ValueError, match=r"generation: not a Whisper checkpoint with an encoder; \d+ encoder weight"):
        MoLExForAudioClassification.from_backbone(str(tmp_path / "generation"))


def test_from_backbone_takes_a_hub_id(hub, tiny_backbone_dirs):  # noqa: F811
    """`from_backbone("openai/whisper-base")` for users with internet: here the fake Hub serves the tiny folder
    under that id; the same weights arrive as from the local folder, and no decoder-only file is needed."""
    folder = tiny_backbone_dirs["whisper"]
    files = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
    hub.add_repo("openai/whisper-base", files)
    from_hub = MoLExForAudioClassification.from_backbone("openai/whisper-base", adapter=ADAPTER)
    local = MoLExForAudioClassification.from_backbone(folder, adapter=ADAPTER)
    assert from_hub.config.backbone_name_or_path == "openai/whisper-base" and not from_hub.config.normalize_audio
    local_state = local.backbone.state_dict()
    for name, a in from_hub.backbone.state_dict().items():
        b = local_state[name]
        if ".lora_" not in name and "molex_router" not in name:
            assert torch.equal(a, b), name
    resolved = {path.rsplit("/", 1)[-1] for method, path in hub.requests if "/resolve/" in path}
    assert {"config.json", "model.safetensors"} <= resolved


@pytest.mark.parametrize(
    ("granularity", "scope", "samples", "click_and_silence"),
    [("utterance", "block", 20_970, False), ("token", "block", 20_970, False), ("utterance", "module", 4_000, True)],
)
def test_a_clip_scores_the_same_alone_and_padded_in_a_batch(granularity, scope, samples, click_and_silence):
    """20,970 samples: 131 mel frames (odd, so conv2's last frame reads one frame past the clip), 66 encoder frames.
    4,000 samples, a click then a tone then digital silence, in a batch of 32,000: the frames past the clip's
    reflection repeat its first sample, a DC louder than the clip itself, which must stay out of the clip's max,
    or the clamp at max - 8 would cut its silence at another level."""
    model = build(router_granularity=granularity, router_scope=scope)
    randomize_experts(model, std=0.5)
    clip = audio(samples, seed=5)
    if click_and_silence:
        clip[0, 0], clip[0, 2_000:] = 0.9, 0.0
    batch = torch.cat([torch.nn.functional.pad(clip, (0, 32_000 - samples)), audio(32_000, seed=6)])
    mask = torch.ones_like(batch, dtype=torch.long)
    mask[0, samples:] = 0
    frames = int(model.backbone._get_feat_extract_output_lengths(samples))
    with torch.no_grad():
        alone = model(clip, output_hidden_states=True)
        in_batch = model(batch, attention_mask=mask, output_hidden_states=True)
        unmasked = model(batch).logits[0]
    torch.testing.assert_close(in_batch.logits[0], alone.logits[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(alone.hidden_states, in_batch.hidden_states, strict=True):
        torch.testing.assert_close(b[0, :frames], a[0], atol=1e-5, rtol=1e-5)
    assert (unmasked - alone.logits[0]).abs().max() > 1e-4  # without the mask the padding is seen: the test can fail


def test_a_2_s_crop_against_the_same_audio_padded_to_30_s_as_whisper_does():
    """The relation documented in whisper_encoder.py, measured on the tiny random encoder (seed 0): the crop's
    log-mel frames 0-198 equal the padded input's, frame 199 does not (its window reaches 40 samples past the crop:
    reflected crop samples vs zeros); the blocks' input (conv + positions) is equal on encoder frames 0-98 (frame 99
    reads mel frame 199); every block's output differs on all 100 frames (attention also sees the 1,400 padding
    frames), while staying similar (cosine >= 0.9997 here; a random tiny encoder barely mixes frames, real Whisper
    mixes far more)."""
    crop = audio(32_000, seed=2)[0]
    padded = torch.nn.functional.pad(crop, (0, 480_000 - 32_000))
    whisper_mel = WhisperFeatureExtractor(feature_size=80)(padded.numpy(), sampling_rate=16_000, return_tensors="pt")
    torch.manual_seed(0)
    encoder = WhisperWaveformEncoder(tiny_backbone_config("whisper")).eval()
    crop_mel, _ = encoder.log_mel(crop[None], torch.tensor([32_000]))
    full_mel = whisper_mel.input_features[..., :200]
    torch.testing.assert_close(crop_mel[..., :199], full_mel[..., :199], atol=1e-5, rtol=0)
    assert (crop_mel[..., 199] - full_mel[..., 199]).abs().max() > 1e-3
    with torch.no_grad():
        ours = encoder(crop[None], output_hidden_states=True).hidden_states
        whisper_way = encoder(padded[None], output_hidden_states=True).hidden_states
    assert ours[0].shape[1] == 100 and whisper_way[0].shape[1] == 1500
    torch.testing.assert_close(ours[0][:, :99], whisper_way[0][:, :99], atol=1e-5, rtol=0)
    assert (ours[0][:, 99] - whisper_way[0][:, 99]).abs().max() > 1e-3
    for block_output, padded_output in zip(ours[1:], whisper_way[1:], strict=True):
        per_frame = (block_output - padded_output[:, :100]).abs().amax(dim=-1)  # (1, 100)
        assert bool((per_frame > 1e-5).all()), per_frame
        cosine = torch.nn.functional.cosine_similarity(block_output, padded_output[:, :100], dim=-1)
        assert float(cosine.min()) > 0.999


def test_clip_length_limits_are_refused_with_the_numbers():
    model = build()
    with torch.no_grad():
        assert model(audio(201)).logits.shape == (1, 2)  # one mel frame, one encoder frame
        with pytest.raises(ValueError, match=r"at least 201 samples"):
            model(audio(200))
        with pytest.raises(ValueError, match=r"`max_source_positions` is 1500 \(480000 samples\)"):
            model(audio(480_160))


def test_config_defaults_and_refusals_for_whisper():
    config = MoLExConfig(backbone_config=tiny_backbone_config("whisper"))
    assert config.normalize_audio is False and config.backbone_config.encoder_layerdrop == 0.0
    assert config.adapter.target_modules == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2")).normalize_audio is True
    with pytest.raises(ValueError, match="`sampling_rate` must be 16000 for a Whisper backbone"):
        MoLExConfig(backbone_config=tiny_backbone_config("whisper"), sampling_rate=22_050)
    with pytest.raises(ValueError, match=r"'intermediate_dense' matches no nn.Linear .*\['fc1', 'fc2'"):
        MoLExForAudioClassification(
            MoLExConfig(
                backbone_config=tiny_backbone_config("whisper"), adapter={"target_modules": ["intermediate_dense"]}
            )
        )


def test_saved_model_ships_the_whisper_code_and_rebuilds_the_front_end(tmp_path):
    """The mel bank and window are non-persistent buffers, left empty by meta-device loading and rebuilt."""
    model = build()
    randomize_experts(model)
    model.save_pretrained(tmp_path)
    assert {"whisper_encoder.py", "backbones.py"} <= set(os.listdir(tmp_path))
    assert not any("log_mel" in key for key in load_file(tmp_path / "model.safetensors"))
    loaded = MoLExForAudioClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.backbone.log_mel.mel_filters, whisper_mel_filters(80))
    assert torch.equal(loaded.backbone.log_mel.window, torch.hann_window(400))
    extractor = loaded.feature_extractor()
    inputs = extractor(audio(24_000)[0].numpy(), sampling_rate=16_000, return_tensors="pt")
    assert not extractor.do_normalize and torch.equal(inputs.input_values, audio(24_000))
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_score_waveform_scores_the_raw_window():
    """No normalisation before Whisper's front end: score_waveform's window score is the model's on the raw clip."""
    model = build()
    randomize_experts(model)
    model.config.crop_samples = 32_000
    clip = audio(32_000, seed=7)
    result = model.score_waveform(clip[0].numpy(), 16_000, signatures=None)
    with torch.no_grad():
        logits = model(clip).logits[0]
    assert result.score == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)


def test_eager_attentions_ignore_padded_frames():
    torch.manual_seed(0)
    config = MoLExConfig(backbone_config=tiny_backbone_config("whisper"), adapter=ADAPTER, attn_implementation="eager")
    model = MoLExForAudioClassification(config).eval()
    waves, mask = audio(8_000, batch=2), torch.ones(2, 8_000, dtype=torch.long)
    mask[0, 4_000:] = 0  # 25 mel frames -> 13 of the 25 encoder frames are real
    with torch.no_grad():
        attentions = model(waves, attention_mask=mask, output_attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape == (2, 2, 25, 25)
    for weights in attentions:
        assert float(weights[0, :, :, 13:].abs().max()) == 0.0
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 25))
