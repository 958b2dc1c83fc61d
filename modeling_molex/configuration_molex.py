"""`MoLExConfig`: the frozen SSL backbone's config, the expert adapter and the back-end, in one `config.json`."""

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .adapter_config import MoLExAdapterConfig
from .backbones import SUPPORTED_BACKBONES, default_target_modules, disable_layerdrop, is_whisper
from .finite_checks import MAX_CROP_SECONDS, MAX_SAMPLING_RATE, MIN_SAMPLING_RATE, finite_number, int_in_range
from .model_inputs import minimum_input_samples
from .whisper_encoder import SAMPLING_RATE as WHISPER_SAMPLING_RATE


POOLING_TYPES = ("attentive_stats", "mean")
ID2LABEL = {0: "spoof", 1: "bonafide"}
# `pipeline("audio-classification")` loads this class from the model repo: it scores through `score_waveform`.
CUSTOM_PIPELINES = {
    "audio-classification": {
        "impl": "pipeline_molex.MoLExAudioClassificationPipeline",
        "pt": ["AutoModelForAudioClassification"],
    }
}


class MoLExConfig(PretrainedConfig):
    """Configuration of [`MoLExForAudioClassification`].

    Args:
        backbone_config (`PretrainedConfig` or `dict`, *optional*):
            Config of the speech encoder: a speech SSL encoder (wav2vec2 / XLS-R, HuBERT, WavLM, data2vec-audio) or
            Whisper (`WhisperConfig`: only its encoder is used, see whisper_encoder.py). A dict needs a
            `model_type`. Defaults to a `Wav2Vec2Config()`. Its layerdrop (`encoder_layerdrop` for Whisper) is
            forced to 0: skipping whole blocks at random breaks routing statistics and DDP, and the backbone is
            frozen anyway.
        adapter (`MoLExAdapterConfig` or `dict`, *optional*):
            Where the LoRA experts sit and how they are routed. Defaults to `MoLExAdapterConfig()`. Its
            `target_modules=None` becomes the backbone family's six projections (see backbones.py).
        backbone_name_or_path (`str`, *optional*):
            Hub id or folder the backbone weights came from (recorded for model cards and expert export).
        use_weighted_layer_sum (`bool`, defaults to `True`):
            Feed the back-end a softmax-weighted sum of all hidden states (CNN projection + every block) instead of
            the last block only. Anti-spoofing cues live in lower SSL layers.
        train_layer_weights (`bool`, defaults to `True`):
            Whether the layer weights of the weighted sum are trained.
        pooling (`str`, defaults to `"attentive_stats"`):
            `"attentive_stats"` (masked attentive statistics pooling: weighted mean and std) or `"mean"` (masked mean).
        attention_hidden_size (`int`, defaults to 128):
            Hidden size of the attention scorer in attentive statistics pooling.
        head_hidden_size (`int`, defaults to 128):
            Hidden size of the two-layer classification MLP.
        head_dropout (`float`, defaults to 0.1):
            Dropout before each layer of the classification MLP, in [0, 1).
        class_weights (`list[float]`, *optional*):
            Cross-entropy weights `[spoof, bonafide]`; ASVspoof training sets are ~9:1 spoof-heavy.
            Each a finite number in (0, 1e6].
        calibration (`dict`, *optional*):
            `{"scale": a, "bias": b}` mapping the raw score `logit[bonafide] - logit[spoof]` to a calibrated
            log-likelihood ratio `a * score + b` (fitted on dev by the training script). Needed for actDCF/Cllr.
            `scale` a finite number > 0, `bias` a finite number.
        crop_samples (`int`, defaults to 64600):
            Clip length (samples) the model was trained on; 64,600 = 4.04 s, the ASVspoof baselines' crop. The model
            accepts any length; scoring code that cuts long clips into windows (the demo) uses this length. From
            the backbone's one-frame minimum (400 samples for the SSL families, 201 for Whisper) to 60 s at
            `sampling_rate`.
        sampling_rate (`int`, defaults to 16000):
            Sampling rate the backbone expects, in [8000, 192000] Hz; written to `preprocessor_config.json`.
        normalize_audio (`bool`, *optional*):
            Zero-mean/unit-variance normalisation per clip in the feature extractor (as the backbone was trained).
            Defaults to `True` for the SSL families and `False` for Whisper, whose log-mel front end (inside the
            model) sets the level itself and was trained on unnormalised audio.
        log_mel_level (`float`, *optional*):
            Whisper only: each clip's log-mel (log10 power) is shifted so that its maximum is this value, in
            [-10, 10], before Whisper's clamp at max - 8, so that a clip scores the same at any gain (without it the
            score follows the input's level). None (the default): Whisper's own front end, equal to
            `WhisperFeatureExtractor`. The SSL families normalise the waveform instead (`normalize_audio`).
        initializer_range (`float`, defaults to 0.02):
            Std of the normal init of routers and head, in [0, 1].
    """

    model_type = "molex"
    # A declared sub-config: `attn_implementation`, `dtype` and device maps given to `from_pretrained` reach it.
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="wav2vec2")}

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        adapter: MoLExAdapterConfig | dict | None = None,
        backbone_name_or_path: str | None = None,
        use_weighted_layer_sum: bool = True,
        train_layer_weights: bool = True,
        pooling: str = "attentive_stats",
        attention_hidden_size: int = 128,
        head_hidden_size: int = 128,
        head_dropout: float = 0.1,
        class_weights: list[float] | None = None,
        calibration: dict[str, float] | None = None,
        crop_samples: int = 64_600,
        sampling_rate: int = 16000,
        normalize_audio: bool | None = None,
        log_mel_level: float | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        self.backbone_config = _build_backbone_config(backbone_config)
        self.adapter = _build_adapter_config(adapter)
        if self.adapter.target_modules is None:
            self.adapter.target_modules = default_target_modules(self.backbone_config)
        self.backbone_name_or_path = backbone_name_or_path
        self.use_weighted_layer_sum = use_weighted_layer_sum
        self.train_layer_weights = train_layer_weights
        self.pooling = pooling
        self.attention_hidden_size = attention_hidden_size
        self.head_hidden_size = head_hidden_size
        self.head_dropout = head_dropout
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.calibration = dict(calibration) if calibration is not None else None
        self.crop_samples = crop_samples
        self.sampling_rate = sampling_rate
        self.normalize_audio = not is_whisper(self.backbone_config) if normalize_audio is None else normalize_audio
        self.log_mel_level = log_mel_level
        self.initializer_range = initializer_range
        kwargs["id2label"] = dict(ID2LABEL)
        kwargs["label2id"] = {label: index for index, label in ID2LABEL.items()}
        kwargs.pop("num_labels", None)
        kwargs.setdefault("custom_pipelines", CUSTOM_PIPELINES)
        # The base class propagates its attention implementation to sub-configs; when none is requested here, keep
        # the one the backbone config already carries (e.g. the resolved "sdpa" of a loaded backbone).
        backbone_attention = getattr(self.backbone_config, "_attn_implementation_internal", None)
        super().__init__(**kwargs)
        if self._attn_implementation is None and backbone_attention is not None:
            self.backbone_config._attn_implementation = backbone_attention
        self._validate()

    def _validate(self) -> None:
        if self.pooling not in POOLING_TYPES:
            raise ValueError(f"`pooling` must be one of {POOLING_TYPES}, got {self.pooling!r}")
        for name in ("attention_hidden_size", "head_hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        int_in_range("sampling_rate", self.sampling_rate, MIN_SAMPLING_RATE, MAX_SAMPLING_RATE)
        longest = int(MAX_CROP_SECONDS * self.sampling_rate)  # a longer window allocates gigabytes per batch
        int_in_range("crop_samples", self.crop_samples, minimum_input_samples(self.backbone_config), longest)
        finite_number("head_dropout", self.head_dropout, 0.0, 1.0, high_open=True)
        finite_number("initializer_range", self.initializer_range, 0.0, 1.0)
        if self.log_mel_level is not None:
            if not is_whisper(self.backbone_config):
                raise ValueError("`log_mel_level` applies to Whisper's log-mel front end only; the SSL families use "
                                 "`normalize_audio`")  # fmt: skip
            finite_number("log_mel_level", self.log_mel_level, -10.0, 10.0)
        if self.class_weights is not None:
            if len(self.class_weights) != 2:
                raise ValueError(f"`class_weights` must be two numbers [spoof, bonafide], got {self.class_weights}")
            for index, weight in enumerate(self.class_weights):
                finite_number(f"class_weights[{index}]", weight, 0.0, 1e6, low_open=True)
        if self.calibration is not None:
            if set(self.calibration) != {"scale", "bias"}:
                raise ValueError(f"`calibration` must be a dict with keys 'scale' and 'bias', got {self.calibration}")
            # An LLR = scale * score + bias: scale <= 0 inverts or erases every verdict, NaN makes them all "spoof".
            finite_number("calibration.scale", self.calibration["scale"], 0.0, low_open=True)
            finite_number("calibration.bias", self.calibration["bias"])
        if is_whisper(self.backbone_config) and self.sampling_rate != WHISPER_SAMPLING_RATE:
            raise ValueError(
                f"`sampling_rate` must be {WHISPER_SAMPLING_RATE} for a Whisper backbone (its log-mel front end is "
                f"fixed), got {self.sampling_rate}"
            )
        hidden_layers = self.backbone_config.num_hidden_layers
        layers = self.adapter.layers_to_transform
        if layers is not None and max(layers) >= hidden_layers:
            raise ValueError(
                f"`adapter.layers_to_transform` {layers} names a block >= backbone num_hidden_layers={hidden_layers}"
            )

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["adapter"] = self.adapter.to_dict()
        return output


def _build_backbone_config(backbone_config: PretrainedConfig | dict | None) -> PretrainedConfig:
    if backbone_config is None:
        backbone_config = AutoConfig.for_model("wav2vec2")
    elif isinstance(backbone_config, dict):
        backbone_config = dict(backbone_config)
        model_type = backbone_config.pop("model_type", None)
        if model_type is None:
            raise ValueError("`backbone_config` given as a dict needs a `model_type` (e.g. 'wav2vec2')")
        backbone_config.pop("transformers_version", None)
        for name in _unused_token_ids(backbone_config):
            backbone_config[name] = None
        backbone_config = AutoConfig.for_model(model_type, **backbone_config)
    elif not isinstance(backbone_config, PretrainedConfig):
        raise ValueError(f"`backbone_config` must be a PretrainedConfig or a dict, got {type(backbone_config)}")
    if backbone_config.model_type not in SUPPORTED_BACKBONES:
        raise ValueError(
            f"`backbone_config.model_type` is {backbone_config.model_type!r}; MoLEx supports {SUPPORTED_BACKBONES}"
        )
    for name in _unused_token_ids(backbone_config.to_dict()):
        setattr(backbone_config, name, None)
    disable_layerdrop(backbone_config)
    return backbone_config


def _unused_token_ids(fields: dict) -> list[str]:
    """The special token ids (`eos_token_id`, ...) outside the backbone's vocabulary. MoLEx uses the encoder only, no
    tokens; an encoder trained without a CTC vocabulary (`vocab_size=2`) kept wav2vec2's default `eos_token_id=2`,
    and transformers warned about it at every load. They become None."""
    vocab_size = fields.get("vocab_size")
    if not isinstance(vocab_size, int):
        return []
    return [name for name, value in fields.items()
            if name.endswith("_token_id") and isinstance(value, int) and not 0 <= value < vocab_size]  # fmt: skip


def _build_adapter_config(adapter: MoLExAdapterConfig | dict | None) -> MoLExAdapterConfig:
    """Always a fresh copy: `add_experts` edits the config in place, so two models must never share one."""
    if adapter is None:
        return MoLExAdapterConfig()
    if isinstance(adapter, dict):
        return MoLExAdapterConfig.from_dict(adapter)
    # `to_dict` also accepts the class of a second remote-code load, which is a different Python class.
    if hasattr(adapter, "to_dict"):
        return MoLExAdapterConfig.from_dict(adapter.to_dict())
    raise ValueError(f"`adapter` must be a MoLExAdapterConfig or a dict, got {type(adapter)}")
