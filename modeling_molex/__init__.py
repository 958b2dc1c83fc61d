"""MoLEx: Mixture of LoRA Experts in speech SSL encoders for audio deepfake detection.

Importing the package registers the classes with the Auto API (so `AutoModelForAudioClassification` works without
`trust_remote_code` when this package is installed) and marks them for remote-code export on `save_pretrained`.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

from .adapter_config import MoLExAdapterConfig
from .configuration_molex import MoLExConfig
from .feature_extraction_molex import MoLExFeatureExtractor
from .modeling_molex import MoLExForAudioClassification
from .outputs import MoLExAudioClassifierOutput, detection_scores
from .router import RouterOutput, TopKRouter


MoLExConfig.register_for_auto_class()
MoLExForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
AutoConfig.register("molex", MoLExConfig, exist_ok=True)
AutoModelForAudioClassification.register(MoLExConfig, MoLExForAudioClassification, exist_ok=True)
AutoFeatureExtractor.register(MoLExConfig, MoLExFeatureExtractor, exist_ok=True)

__all__ = [
    "MoLExAdapterConfig",
    "MoLExAudioClassifierOutput",
    "MoLExConfig",
    "MoLExFeatureExtractor",
    "MoLExForAudioClassification",
    "RouterOutput",
    "TopKRouter",
    "detection_scores",
]
