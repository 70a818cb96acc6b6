"""Stable Codec (Stability AI's Transformer Audio AutoEncoder) as a Hugging Face `transformers` model.

Importing the package registers `stable_codec` with `AutoConfig`, `AutoModel` and `AutoFeatureExtractor`, which then
also load checkpoints in the original layout (`model_config.json` + `model.safetensors` / `model.ckpt`), converting
them on the fly.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from .configuration_stable_codec import POSTHOC_BOTTLENECK_PRESETS, StableCodecConfig
from .feature_extraction_stable_codec import StableCodecFeatureExtractor
from .modeling_stable_codec import (
    StableCodecDecoderOutput,
    StableCodecEncoderOutput,
    StableCodecModel,
    StableCodecOutput,
    StableCodecPreTrainedModel,
)
from .original_checkpoint import OriginalCheckpointError, register_original_layout_with_auto_classes


__version__ = "0.1.0"

AutoConfig.register(StableCodecConfig.model_type, StableCodecConfig, exist_ok=True)
AutoModel.register(StableCodecConfig, StableCodecModel, exist_ok=True)
AutoFeatureExtractor.register(StableCodecConfig, StableCodecFeatureExtractor, exist_ok=True)
register_original_layout_with_auto_classes()

__all__ = [
    "OriginalCheckpointError",
    "POSTHOC_BOTTLENECK_PRESETS",
    "StableCodecConfig",
    "StableCodecDecoderOutput",
    "StableCodecEncoderOutput",
    "StableCodecFeatureExtractor",
    "StableCodecModel",
    "StableCodecOutput",
    "StableCodecPreTrainedModel",
]
