"""What differs between the backbone families MoLEx adapts, in one place: how the frozen encoder is built and
loaded, which linears carry experts by default, and whether raw audio is normalised before it.

- speech SSL encoders (wav2vec2 / XLS-R, HuBERT, WavLM, data2vec-audio): `AutoModel` from transformers; they read
  waveforms normalised per clip (unless their feature extractor says otherwise, as WavLM-Large's);
- Whisper: only the encoder of `WhisperModel`, wrapped by `WhisperWaveformEncoder` so that it reads waveforms too
  (its log-mel front end normalises the level itself, so the audio is not normalised before it).
"""

from transformers import AutoModel, PretrainedConfig, PreTrainedModel, Wav2Vec2FeatureExtractor

from .whisper_encoder import WhisperWaveformEncoder


SSL_BACKBONES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
WHISPER = "whisper"
SUPPORTED_BACKBONES = (*SSL_BACKBONES, WHISPER)
# The six projections of a transformer block: attention q, k, v, out, then the feed-forward's two linears.
SSL_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense")
WHISPER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def is_whisper(backbone_config: PretrainedConfig) -> bool:
    return getattr(backbone_config, "model_type", None) == WHISPER


def default_target_modules(backbone_config: PretrainedConfig) -> list[str]:
    """The six projections of each block, by this family's module names."""
    return list(WHISPER_TARGET_MODULES if is_whisper(backbone_config) else SSL_TARGET_MODULES)


def disable_layerdrop(backbone_config: PretrainedConfig) -> None:
    """Skipping whole blocks at random breaks routing statistics and DDP, and the backbone is frozen anyway."""
    if is_whisper(backbone_config):
        backbone_config.encoder_layerdrop = 0.0  # WhisperWaveformEncoder never drops blocks; recorded as such
    else:
        backbone_config.layerdrop = 0.0


def build_backbone(backbone_config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised backbone of this config (weights come from a checkpoint afterwards)."""
    if is_whisper(backbone_config):
        return WhisperWaveformEncoder(backbone_config)
    return AutoModel.from_config(backbone_config)


def load_pretrained_backbone(name_or_path: str, backbone_config: PretrainedConfig) -> PreTrainedModel:
    """The pretrained backbone from a Hub id or local folder. For Whisper only the encoder's tensors are loaded
    (from `WhisperModel` or `WhisperForConditionalGeneration` checkpoints); a checkpoint that lacks one of them is
    refused, since a silently random-initialised encoder weight would give wrong scores with no error."""
    if not is_whisper(backbone_config):
        return AutoModel.from_pretrained(name_or_path, config=backbone_config)
    backbone, info = WhisperWaveformEncoder.from_pretrained(
        name_or_path, config=backbone_config, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise ValueError(
            f"{name_or_path}: not a Whisper checkpoint with an encoder; {len(missing)} encoder weight(s) missing, "
            f"e.g. {missing[:5]} (expected `encoder.*` or `model.encoder.*` keys)"
        )
    return backbone


def backbone_normalizes_audio(name_or_path: str, backbone_config: PretrainedConfig) -> bool:
    """Whether raw audio is normalised per clip before the backbone, as its own feature extractor does (e.g.
    WavLM-Large does not; default True). Never for Whisper: the log-mel front end inside the model sets the level
    (clamp at the clip's max - 8) and was trained on unnormalised audio."""
    if is_whisper(backbone_config):
        return False
    try:
        return bool(Wav2Vec2FeatureExtractor.from_pretrained(name_or_path).do_normalize)
    except (OSError, ValueError):
        return True
