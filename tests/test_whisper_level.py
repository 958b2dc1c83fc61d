"""`log_mel_level`: a Whisper MoLEx whose scores do not depend on the input's gain.

Whisper's front end follows the input's level (a gain g adds 2 log10 g to every log-mel value), so without it the
same clip at -20 dB flipped 6 % of the main job's verdicts on the mini corpus's eval split. With `log_mel_level` set,
each clip's log-mel is shifted so that its maximum is that value before the clamp at max - 8: any gain gives the
same score, alone or padded in a batch, through the model and through `score_waveform`."""

import math

import pytest
import torch
from accelerate import Accelerator
from conftest import randomize_experts, tiny_backbone_config
from test_whisper_backbone import ADAPTER, audio

from modeling_molex import MoLExConfig, MoLExForAudioClassification
from modeling_molex.whisper_encoder import WhisperLogMelSpectrogram
from training.trainer.config import parse_train_config
from training.trainer.run_setup import build_model


LEVEL = 0.75  # the main job's value (configs/tiny.yaml): the median clip maximum of the mini corpus's train split


def build(level: float | None) -> MoLExForAudioClassification:
    torch.manual_seed(0)
    config = MoLExConfig(backbone_config=tiny_backbone_config("whisper"), adapter=ADAPTER, log_mel_level=level)
    model = MoLExForAudioClassification(config).eval()
    randomize_experts(model, std=0.5)
    return model


@pytest.mark.parametrize("gain", [0.01, 0.3, 4.0])
def test_with_a_level_any_gain_gives_the_same_logits_and_without_one_it_does_not(gain):
    clip = audio(16_000, seed=1)
    with torch.no_grad():
        levelled = build(LEVEL)
        torch.testing.assert_close(levelled(clip * gain).logits, levelled(clip).logits, atol=1e-4, rtol=1e-4)
        # The test can fail: without the level, the encoder's output follows the gain, 100x more than with it.
        outputs = {}
        for name, model in (("levelled", levelled), ("raw", build(None))):
            quiet, loud = (model(clip * g, output_hidden_states=True).hidden_states[-1] for g in (gain, 1.0))
            outputs[name] = float((quiet - loud).abs().max())
        assert outputs["raw"] > 1e-3 and outputs["levelled"] < outputs["raw"] / 100, outputs


def test_the_levelled_front_end_is_whispers_on_the_clip_brought_to_that_level():
    """Shifting the log-mel by c is what a gain of 10 ** (c / 2) does to the audio (log10 of power)."""
    clip = audio(12_000, seed=2)
    lengths = torch.tensor([clip.shape[1]])
    whisper = WhisperLogMelSpectrogram(80)
    raw, _ = whisper(clip, lengths)
    clip_max = float((raw * 4.0 - 4.0).max())  # undo Whisper's (x + 4) / 4
    expected, _ = whisper(clip * 10 ** ((LEVEL - clip_max) / 2), lengths)
    whisper.level = LEVEL
    levelled, mask = whisper(clip, lengths)
    torch.testing.assert_close(levelled, expected, atol=1e-4, rtol=1e-4)
    assert float((levelled * 4.0 - 4.0).max()) == pytest.approx(LEVEL, abs=1e-5)


def test_each_clip_of_a_padded_batch_is_levelled_on_its_own_frames():
    model = build(LEVEL)
    clip = audio(9_000, seed=3) * 0.02
    batch = torch.cat([torch.nn.functional.pad(clip, (0, 24_000 - 9_000)), audio(24_000, seed=4)])
    mask = torch.ones_like(batch, dtype=torch.long)
    mask[0, 9_000:] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(batch, attention_mask=mask).logits[0], model(clip).logits[0], atol=1e-5,
                                   rtol=1e-5)  # fmt: skip


def test_score_waveform_gives_a_quiet_and_a_loud_copy_the_same_score_and_verdict():
    model = build(LEVEL)
    model.config.crop_samples = 16_000
    clip = audio(40_000, seed=5)[0].numpy()
    loud, quiet = (model.score_waveform(clip * g, 16_000, signatures=None) for g in (1.0, 0.03))
    assert quiet.score == pytest.approx(loud.score, abs=1e-4) and quiet.verdict == loud.verdict


def test_the_level_round_trips_and_is_refused_where_it_cannot_apply(tmp_path):
    model = build(LEVEL)
    model.save_pretrained(tmp_path)
    loaded = MoLExForAudioClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.log_mel_level == LEVEL and loaded.backbone.log_mel.level == LEVEL
    clip = audio(8_000, seed=6)
    with torch.no_grad():
        assert torch.equal(loaded(clip * 0.1).logits, model(clip * 0.1).logits)
    whisper = tiny_backbone_config("whisper")
    for bad in (math.nan, math.inf, 11.0, "1"):
        with pytest.raises(ValueError, match="`log_mel_level`"):
            MoLExConfig(backbone_config=whisper, log_mel_level=bad)
    with pytest.raises(ValueError, match="`log_mel_level` applies to Whisper's log-mel front end only"):
        MoLExConfig(backbone_config=tiny_backbone_config("wav2vec2"), log_mel_level=LEVEL)
    assert MoLExConfig(backbone_config=whisper).log_mel_level is None  # Whisper's own front end by default


def test_training_passes_the_level_to_the_model(tmp_path, tiny_backbone_dirs):
    argv = ["--data_root", "/x", "--output_dir", str(tmp_path), "--backbone", tiny_backbone_dirs["whisper"]]
    argv += ["--num_experts", "2", "--top_k", "1", "--rank", "2", "--log_mel_level", "0.5"]
    model = build_model(parse_train_config(argv), Accelerator(cpu=True))
    assert model.config.log_mel_level == 0.5 and model.backbone.log_mel.level == 0.5


def test_one_config_serves_an_ssl_backbone_too_the_level_is_dropped_with_a_warning(
    tmp_path, tiny_backbone_dirs, caplog
):
    """configs/tiny.yaml sets the level for Whisper; `main_job --pretrain` and `--backbone` reuse it on SSL encoders."""
    argv = ["--data_root", "/x", "--output_dir", str(tmp_path), "--backbone", tiny_backbone_dirs["wav2vec2"]]
    argv += ["--num_experts", "2", "--top_k", "1", "--rank", "2", "--log_mel_level", "0.5"]
    with caplog.at_level("WARNING", logger="training.trainer.run_setup"):
        model = build_model(parse_train_config(argv), Accelerator(cpu=True))
    assert model.config.log_mel_level is None and model.config.normalize_audio is True
    assert "`log_mel_level` (0.5) applies to Whisper backbones only; not used for" in caplog.text
    assert "(wav2vec2)" in caplog.text
