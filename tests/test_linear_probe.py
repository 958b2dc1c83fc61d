"""The frozen-encoder linear probe: features come from the MoLEx front end of every backbone family, and the probe
reports the same metrics as the MFCC baseline."""

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FAMILIES
from train_fixtures import write_synthetic_asvspoof5
from transformers import AutoModel

from training.data.audio import load_audio, normalize
from training.data.loaders import audio_paths, load_asvspoof5
from training.encoders import linear_probe


@pytest.mark.parametrize("family", FAMILIES)
def test_embed_pools_every_layer_of_the_frozen_encoder(family, tiny_backbone_dirs, tmp_path):
    folder = tiny_backbone_dirs[family]
    encoder = linear_probe.load_encoder(folder, random_init=False)
    rng = np.random.default_rng(0)
    path = tmp_path / "clip.flac"
    sf.write(path, 0.1 * rng.standard_normal(8000), 16000, subtype="PCM_16")
    features = linear_probe.embed(encoder, [str(path)])
    width, states = encoder.config.backbone_config.hidden_size, encoder.config.backbone_config.num_hidden_layers + 1
    assert features["layer_mean"].shape == (1, 2 * width)
    assert features["layer_concat"].shape == (1, states * 2 * width)
    assert np.isfinite(features["layer_concat"]).all()
    if encoder.config.backbone_config.model_type != "whisper":  # the wav2vec2 family: the plain backbone's states
        wave = load_audio(str(path))
        wave = normalize(wave, len(wave)) if encoder.config.normalize_audio else wave
        with torch.inference_mode():
            hidden = AutoModel.from_pretrained(folder).eval()(torch.from_numpy(wave)[None], output_hidden_states=True)
        expected = torch.cat([torch.cat([h[0].mean(0), h[0].std(0)]) for h in hidden.hidden_states]).numpy()
        np.testing.assert_allclose(features["layer_concat"][0], expected, rtol=1e-4, atol=1e-5)


def test_random_init_probes_the_same_architecture_with_other_weights(tiny_backbone_dirs, tmp_path):
    folder = tiny_backbone_dirs[FAMILIES[0]]
    pretrained = linear_probe.load_encoder(folder, random_init=False)
    random = linear_probe.load_encoder(folder, random_init=True, seed=5)
    assert pretrained.config.backbone_config.to_dict() == random.config.backbone_config.to_dict()
    some_pretrained = next(p for n, p in pretrained.backbone.named_parameters() if "weight" in n and p.ndim == 2)
    name = next(n for n, p in pretrained.backbone.named_parameters() if p is some_pretrained)
    assert not torch.equal(some_pretrained, dict(random.backbone.named_parameters())[name])


def test_probe_reports_dev_eval_known_and_unseen_for_each_pooling(tiny_backbone_dirs, tmp_path):
    corpus = write_synthetic_asvspoof5(tmp_path / "corpus", per_class=4)
    data = load_asvspoof5(str(corpus), splits=("train", "dev", "eval"))
    results = linear_probe.probe(str(corpus), linear_probe.load_encoder(tiny_backbone_dirs[FAMILIES[0]], False), data)
    assert set(results) == {f"{p}/l2={v:g}" for p in ("layer_mean", "layer_concat") for v in linear_probe.L2_VALUES}
    for row in results.values():
        assert set(row) == {"dev", "eval", "eval_known", "eval_unseen"}
        assert 0.0 <= row["dev"]["eer"] <= 1.0
    assert len(audio_paths(data["train"])) == len(data["train"])
