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
from .original_checkpoint import OriginalCheckpointError, find_original_layout


__version__ = "0.1.0"

AutoConfig.register(StableCodecConfig.model_type, StableCodecConfig, exist_ok=True)
AutoModel.register(StableCodecConfig, StableCodecModel, exist_ok=True)
AutoFeatureExtractor.register(StableCodecConfig, StableCodecFeatureExtractor, exist_ok=True)


def _fall_back_to_the_original_layout(auto_class, stable_codec_class):
    """A repo in the original layout has model_config.json where the Auto classes look for config.json (and
    preprocessor_config.json). Where their own lookup fails on such a repo, load it with our class, whose loaders
    read that layout; for every other location their error stands."""
    auto_from_pretrained = auto_class.from_pretrained.__func__
    if getattr(auto_from_pretrained, "stable_codec_fallback", False):
        return

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return auto_from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)
        except (OSError, ValueError):
            if find_original_layout(pretrained_model_name_or_path, **kwargs) is None:
                raise
        return stable_codec_class.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    from_pretrained.stable_codec_fallback = True
    auto_class.from_pretrained = classmethod(from_pretrained)


for _auto_class, _stable_codec_class in (
    (AutoConfig, StableCodecConfig),
    (AutoModel, StableCodecModel),
    (AutoFeatureExtractor, StableCodecFeatureExtractor),
):
    _fall_back_to_the_original_layout(_auto_class, _stable_codec_class)

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
