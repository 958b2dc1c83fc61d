"""The shipped SSL encoder (training/encoders/molex_ssl_tiny): the bytes its RECIPE.md records, small, loadable by
AutoModel and MoLEx, and the main job's default backbone."""

import hashlib
import re
from pathlib import Path

import yaml
from transformers import AutoFeatureExtractor, AutoModel

from modeling_molex import MoLExAdapterConfig, MoLExForAudioClassification


ROOT = Path(__file__).resolve().parents[1]
ENCODER = ROOT / "training" / "encoders" / "molex_ssl_tiny"


def test_weights_match_the_checksum_recorded_in_the_recipe_and_stay_small():
    weights = ENCODER / "model.safetensors"
    recorded = re.search(r"SHA-256[^0-9a-f]*([0-9a-f]{64})", (ENCODER / "RECIPE.md").read_text())
    assert recorded, "RECIPE.md must record the SHA-256 of model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == recorded.group(1)
    assert weights.stat().st_size <= 10 * 1024 * 1024


def test_the_encoder_loads_as_a_standard_model_with_its_feature_extractor_and_under_molex():
    encoder = AutoModel.from_pretrained(ENCODER)
    assert type(encoder).__name__ == "Wav2Vec2Model"
    assert AutoFeatureExtractor.from_pretrained(ENCODER).do_normalize is True
    model = MoLExForAudioClassification.from_backbone(str(ENCODER), adapter=MoLExAdapterConfig(num_experts=2, top_k=1))
    assert model.config.normalize_audio is True
    weight = encoder.feature_extractor.conv_layers[0].conv.weight
    assert (model.backbone.feature_extractor.conv_layers[0].conv.weight == weight).all()


def test_the_ssl_main_job_config_trains_on_the_shipped_encoder():
    config = yaml.safe_load((ROOT / "configs" / "tiny_ssl.yaml").read_text())
    assert (ROOT / config["backbone"]).resolve() == ENCODER
