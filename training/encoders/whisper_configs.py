"""The `WhisperConfig`, `GenerationConfig` and `WhisperFeatureExtractor` of a converted CTranslate2 Whisper model.

Why here and not copied: CTranslate2 keeps no transformers config. Sizes come from the tensors (`WhisperDimensions`),
token ids from the package's tokenizer.json (so tiny.en's `<|endoftext|>` 50256 and base's 50257 are both right,
where `WhisperConfig`'s defaults fit only the English-only models), and the decoding rules (suppressed tokens,
languages, alignment heads) from CTranslate2's config.json. Generation settings go to generation_config.json only:
in the model config transformers rejects them.
"""

from dataclasses import asdict
from pathlib import Path

from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

from training.encoders.whisper_from_ctranslate2 import WhisperDimensions


MULTILINGUAL_VOCAB_SIZE = (
    51865  # Whisper's own rule (and CTranslate2's, transformers'): vocab >= 51865 is multilingual
)
MAX_INITIAL_TIMESTAMP_INDEX = 50  # OpenAI's default max_initial_timestamp of 1 s, in 20 ms timestamp tokens
SPECIAL_TOKENS = {
    "end_of_text": "<|endoftext|>",
    "start_of_transcript": "<|startoftranscript|>",
    "no_timestamps": "<|notimestamps|>",
    "start_of_previous": "<|startofprev|>",
    "transcribe": "<|transcribe|>",
    "translate": "<|translate|>",
}


def special_token_ids(tokenizer: dict, source: Path, vocab_size: int) -> dict[str, int]:
    """Ids of all added tokens, by content, checked to be inside the model's vocabulary."""
    try:
        ids = {token["content"]: int(token["id"]) for token in tokenizer["added_tokens"]}
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source}: field 'added_tokens' is not a list of {{id, content}} ({error!r})") from None
    missing = sorted(set(SPECIAL_TOKENS.values()) - set(ids))
    if missing:
        raise ValueError(f"{source}: field 'added_tokens' lacks the Whisper tokens {missing}")
    outside = {content: value for content, value in ids.items() if not 0 <= value < vocab_size}
    if outside:
        raise ValueError(f"{source}: added tokens outside the model's vocabulary of {vocab_size}: {outside}")
    return ids


def _id_list(ct2_config: dict, field: str, source: Path, vocab_size: int) -> list[int]:
    values = ct2_config.get(field) or []
    if not isinstance(values, list) or not all(isinstance(value, int) and 0 <= value < vocab_size for value in values):
        raise ValueError(f"{source}: field {field!r} must be a list of token ids below {vocab_size}")
    return values


def _alignment_heads(ct2_config: dict, source: Path, dims: WhisperDimensions) -> list[list[int]]:
    heads = ct2_config.get("alignment_heads") or []
    valid = all(
        isinstance(pair, list)
        and len(pair) == 2
        and 0 <= pair[0] < dims.decoder_layers
        and 0 <= pair[1] < dims.decoder_attention_heads
        for pair in heads
    )
    if not isinstance(heads, list) or not valid:
        raise ValueError(f"{source}: field 'alignment_heads' must be [layer, head] pairs of the decoder")
    return heads


def build_configs(
    dims: WhisperDimensions, tokenizer: dict, tokenizer_path: Path, ct2_config: dict, ct2_config_path: Path
) -> tuple[WhisperConfig, GenerationConfig, WhisperFeatureExtractor]:
    """The three configs of a standard transformers Whisper folder."""
    ids = special_token_ids(tokenizer, tokenizer_path, dims.vocab_size)
    token = {key: ids[content] for key, content in SPECIAL_TOKENS.items()}
    suppress = _id_list(ct2_config, "suppress_ids", ct2_config_path, dims.vocab_size)
    begin_suppress = _id_list(ct2_config, "suppress_ids_begin", ct2_config_path, dims.vocab_size)
    token_ids = {
        "bos_token_id": token["end_of_text"],  # as in OpenAI's transformers configs: Whisper's tokenizer bos
        "eos_token_id": token["end_of_text"],
        "pad_token_id": token["end_of_text"],
        "decoder_start_token_id": token["start_of_transcript"],
    }
    config = WhisperConfig(
        **asdict(dims),
        **token_ids,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        dtype="float32",
        # A frozen encoder for detection: no dropout or SpecAugment unless a trainer turns them on.
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        apply_spec_augment=False,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    multilingual = dims.vocab_size >= MULTILINGUAL_VOCAB_SIZE
    generation = {
        **token_ids,
        "max_length": dims.max_target_positions,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": begin_suppress,
        "alignment_heads": _alignment_heads(ct2_config, ct2_config_path, dims),
        "no_timestamps_token_id": token["no_timestamps"],
        "prev_sot_token_id": token["start_of_previous"],
        "max_initial_timestamp_index": MAX_INITIAL_TIMESTAMP_INDEX,
        "is_multilingual": multilingual,
        "return_timestamps": False,
    }
    if multilingual:
        language_ids = set(_id_list(ct2_config, "lang_ids", ct2_config_path, dims.vocab_size))
        generation["lang_to_id"] = {content: value for content, value in ids.items() if value in language_ids}
        if len(generation["lang_to_id"]) != len(language_ids):
            raise ValueError(f"{ct2_config_path}: field 'lang_ids' names ids that {tokenizer_path} does not define")
        generation["task_to_id"] = {"transcribe": token["transcribe"], "translate": token["translate"]}
        # Without a task (OpenAI's Hub configs give one through the deprecated forced_decoder_ids), transformers'
        # language detection builds the prompt <|sot|><|lang|><|notimestamps|> and base then repeats one word.
        generation["task"] = "transcribe"
    features = WhisperFeatureExtractor(feature_size=dims.num_mel_bins)
    return config, GenerationConfig(**generation), features
