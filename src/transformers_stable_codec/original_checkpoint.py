"""Reading checkpoints in the original layout (stable-audio-tools `model_config.json` + `model.ckpt` /
`model.safetensors`): the config translation and the one-to-one weight-name mapping.

Only what the released Stable Codec checkpoints and the paper use is accepted; any other option of the original
raises an error naming it, rather than converting into a model that computes something else.
"""

import json
import math
import os
import re

import torch
from tqdm.auto import tqdm

from .configuration_stable_codec import StableCodecConfig


class OriginalCheckpointError(ValueError):
    """The original config or weights do not describe a model this package implements exactly."""


def _require(condition: bool, message: str):
    if not condition:
        raise OriginalCheckpointError(message)


def config_from_original(model_config: dict, **overrides) -> StableCodecConfig:
    """Translates an original `model_config.json` (as a dict) into a `StableCodecConfig`."""
    _require(
        model_config.get("model_type") == "autoencoder",
        f"model_type {model_config.get('model_type')!r} is not supported: only the 'autoencoder' model of "
        "stable-audio-tools (Stable Codec) is.",
    )
    model = model_config.get("model")
    _require(isinstance(model, dict), "the original config has no 'model' section.")
    for section in ("pretransform", "encoder", "decoder", "bottleneck"):
        _require(isinstance(model.get(section), dict), f"the original config has no model.{section} section.")

    pretransform = model["pretransform"]
    _require(
        pretransform.get("type") == "patched",
        f"pretransform type {pretransform.get('type')!r} is not supported; Stable Codec uses 'patched'.",
    )
    patch_size = pretransform.get("config", {}).get("patch_size")
    _require(pretransform.get("config", {}).get("channels", 1) == 1, "only mono (1-channel) patching is supported.")
    _require(isinstance(patch_size, int) and patch_size > 0, "pretransform.config.patch_size must be a positive integer.")
    _require(model.get("io_channels", 1) == 1 and model_config.get("audio_channels", 1) == 1, "only mono models are supported.")

    encoder, decoder = model["encoder"], model["decoder"]
    for name, section in (("encoder", encoder), ("decoder", decoder)):
        _require(section.get("type") == "taae", f"{name} type {section.get('type')!r} is not supported; only 'taae' is.")
        options = section.get("config", {})
        for flag in ("conformer", "use_snake", "use_dilated_conv", "soft_clip"):
            _require(not options.get(flag, False), f"{name} option {flag}=true is not supported (Stable Codec uses false).")
        _require(options.get("layer_scale", True), f"{name} option layer_scale=false is not supported (Stable Codec uses true).")
    encoder_options, decoder_options = encoder["config"], decoder["config"]

    # The original's TAAE defaults, for keys a config leaves out.
    defaults = {"channels": 128, "c_mults": [1, 2, 4, 8], "strides": [2, 4, 8, 8], "transformer_depths": [3, 3, 3, 3], "sliding_window": [63, 64]}
    architecture = {}
    for key, default in defaults.items():
        encoder_value, decoder_value = encoder_options.get(key, default), decoder_options.get(key, default)
        _require(
            encoder_value == decoder_value,
            f"encoder and decoder disagree on {key} ({encoder_value} vs {decoder_value}); only mirrored models are supported.",
        )
        architecture[key] = encoder_value
    latent_dim = model.get("latent_dim")
    _require(
        latent_dim == encoder_options.get("latent_dim") == decoder_options.get("latent_dim"),
        "model.latent_dim, encoder latent_dim and decoder latent_dim must agree.",
    )
    _require(
        encoder_options.get("in_channels", patch_size) == patch_size
        and decoder_options.get("out_channels", patch_size) == patch_size,
        f"the encoder's in_channels and the decoder's out_channels must equal the patch size ({patch_size}).",
    )
    hop_length = patch_size * math.prod(architecture["strides"])
    _require(
        model.get("downsampling_ratio", hop_length) == hop_length,
        f"downsampling_ratio {model.get('downsampling_ratio')} does not match patch_size * prod(strides) = {hop_length}.",
    )

    bottleneck = model["bottleneck"]
    _require(
        bottleneck.get("type") == "dithered_fsq",
        f"bottleneck type {bottleneck.get('type')!r} is not supported; Stable Codec uses 'dithered_fsq'.",
    )
    bottleneck_options = bottleneck.get("config", {})
    _require(bottleneck_options.get("num_codebooks", 1) == 1, "only one FSQ codebook (num_codebooks=1) is supported.")
    _require(bottleneck_options.get("dim", latent_dim) == latent_dim, "the FSQ dim must equal latent_dim.")
    levels = bottleneck_options.get("levels")
    fsq_levels = [levels] * latent_dim if isinstance(levels, int) else levels
    _require(isinstance(fsq_levels, list) and len(fsq_levels) == latent_dim, f"FSQ levels {levels!r} do not fit latent_dim {latent_dim}.")

    kwargs = {
        "sampling_rate": model_config.get("sample_rate"),
        "patch_size": patch_size,
        "hidden_size": architecture["channels"],
        "channel_multipliers": architecture["c_mults"],
        "strides": architecture["strides"],
        "transformer_depths": architecture["transformer_depths"],
        "sliding_window": architecture["sliding_window"],
        "latent_dim": latent_dim,
        "fsq_levels": fsq_levels,
        "fsq_noise_dropout": bottleneck_options.get("noise_dropout", 0.05),
    }
    kwargs.update(overrides)
    try:
        return StableCodecConfig(**kwargs)
    except ValueError as error:
        raise OriginalCheckpointError(f"the original config does not describe a valid Stable Codec: {error}") from None


_LAYER_RENAMES = {
    "pre_norm.gamma": "attention_norm.weight",
    "self_attn.to_qkv.weight": "attention.qkv_proj.weight",
    "self_attn.to_out.weight": "attention.o_proj.weight",
    "self_attn.q_norm.weight": "attention.q_norm.weight",
    "self_attn.q_norm.bias": "attention.q_norm.bias",
    "self_attn.k_norm.weight": "attention.k_norm.weight",
    "self_attn.k_norm.bias": "attention.k_norm.bias",
    "self_attn_scale.scale": "attention_scale.scale",
    "ff_norm.gamma": "feed_forward_norm.weight",
    "ff.ff.0.proj.weight": "feed_forward.input_proj.weight",
    "ff.ff.0.proj.bias": "feed_forward.input_proj.bias",
    "ff.ff.2.weight": "feed_forward.output_proj.weight",
    "ff.ff.2.bias": "feed_forward.output_proj.bias",
    "ff_scale.scale": "feed_forward_scale.scale",
}
# Buffers the original saves that carry no information: checked, then dropped.
_CONSTANT_LAYER_BUFFERS = ("pre_norm.beta", "ff_norm.beta", "rope.inv_freq")
_CONV_RENAMES = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
    "parametrizations.weight.original0": "parametrizations.weight.original0",
    "parametrizations.weight.original1": "parametrizations.weight.original1",
    "bias": "bias",
}


def _rename_conv(target: str, leaf: str) -> str | None:
    return f"{target}.{_CONV_RENAMES[leaf]}" if leaf in _CONV_RENAMES else None


def original_key_to_ours(key: str, config: StableCodecConfig) -> str | None:
    """Our name for an original weight, or None for an original key that has no place in our model."""
    num_stages = len(config.strides)
    match = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(.+)", key)
    if match is None:
        return None
    side, index, rest = match.group(1), int(match.group(2)), match.group(3)
    if index == 0:
        return _rename_conv(f"{side}.input_conv", rest)
    if index == num_stages + 2:
        return _rename_conv(f"{side}.output_conv", rest)
    if not 1 <= index <= num_stages:
        return None
    stage = f"{side}.stages.{index - 1}"
    # TAAEBlock: encoder = [activation, conv, transformers], decoder = [transformers, activation, conv];
    # transformers = [transpose, layer_0 .. layer_n, transpose].
    transformer_slot, conv_slot, conv_name = (2, 1, "downsample") if side == "encoder" else (0, 2, "upsample")
    match = re.fullmatch(rf"layers\.{transformer_slot}\.(\d+)\.(.+)", rest)
    if match is not None:
        layer, leaf = int(match.group(1)) - 1, match.group(2)
        return f"{stage}.transformer.layers.{layer}.{_LAYER_RENAMES[leaf]}" if leaf in _LAYER_RENAMES else None
    match = re.fullmatch(rf"layers\.{conv_slot}\.(.+)", rest)
    return _rename_conv(f"{stage}.{conv_name}", match.group(1)) if match is not None else None


def _is_constant_buffer(key: str) -> bool:
    return any(key.endswith("." + name) for name in _CONSTANT_LAYER_BUFFERS)


def convert_original_state_dict(
    original_state_dict: dict[str, torch.Tensor],
    config: StableCodecConfig,
    expected_keys: set[str],
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Maps every original weight onto our names. Raises `OriginalCheckpointError` listing the missing and
    unexpected keys if the checkpoint and the config do not describe the same model."""
    converted, unexpected = {}, []
    items = tqdm(original_state_dict.items(), desc="Converting weights", unit="tensor", disable=not progress)
    for key, tensor in items:
        if _is_constant_buffer(key):
            if key.endswith("beta"):
                _require(not torch.any(tensor), f"{key} is a non-zero layer norm bias, which Stable Codec does not have.")
            continue
        target = original_key_to_ours(key, config)
        if target is None or target not in expected_keys:
            unexpected.append(key)
        else:
            converted[target] = tensor
    missing = sorted(expected_keys - set(converted))
    if missing or unexpected:
        raise OriginalCheckpointError(
            "the checkpoint does not match its config: "
            f"{len(missing)} missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}, "
            f"{len(unexpected)} unexpected keys {sorted(unexpected)[:20]}{' ...' if len(unexpected) > 20 else ''}."
        )
    return converted


def load_original_weights(path: str) -> dict[str, torch.Tensor]:
    """Reads `model.safetensors` or a Lightning-style `model.ckpt` (a dict with `state_dict`)."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path))
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise OriginalCheckpointError(f"could not read the checkpoint {path}: {error}") from error
    _require(
        isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict),
        f"{path} holds no 'state_dict' dict; an original model.ckpt is a dict with a 'state_dict' entry.",
    )
    return checkpoint["state_dict"]


def read_original_config(model_config_path) -> dict:
    try:
        with open(model_config_path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise OriginalCheckpointError(f"could not read the original config {model_config_path}: {error}") from error


def model_from_original(model_config_path, checkpoint_path, progress: bool = False, config=None):
    """Builds a `StableCodecModel` (float32, eval mode) from an original `model_config.json` and its weights
    (with `config`, if given, in place of the translated one: it must describe the same weights)."""
    from .modeling_stable_codec import StableCodecModel

    config = config or config_from_original(read_original_config(model_config_path))
    model = StableCodecModel(config)
    expected = model.state_dict()
    state_dict = convert_original_state_dict(load_original_weights(checkpoint_path), config, set(expected), progress)
    mismatched = [
        f"{key}: checkpoint {tuple(tensor.shape)} vs config {tuple(expected[key].shape)}"
        for key, tensor in state_dict.items()
        if tensor.shape != expected[key].shape
    ]
    _require(not mismatched, f"the checkpoint's weights do not fit its config: {mismatched[:10]}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


ORIGINAL_WEIGHT_FILES = ("model.safetensors", "model.ckpt")  # the order the original's own loader tries them


def find_original_layout(location, subfolder: str = "", **hub_kwargs) -> tuple[str, str] | None:
    """`(model_config.json, weights)` paths if `location` (a folder or a Hub repo id) holds a checkpoint in the
    original layout and none in ours (`config.json`); None otherwise."""
    location, subfolder = str(location), subfolder or ""
    if os.path.isdir(location):
        folder = os.path.join(location, subfolder)
        if os.path.isfile(os.path.join(folder, "config.json")) or not os.path.isfile(os.path.join(folder, "model_config.json")):
            return None
        for name in ORIGINAL_WEIGHT_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, "model_config.json"), os.path.join(folder, name)
        raise OriginalCheckpointError(
            f"{folder} has an original model_config.json but neither {' nor '.join(ORIGINAL_WEIGHT_FILES)}."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(location)
    except HFValidationError:
        return None  # neither a folder nor a repo id: let the caller report it

    hub_kwargs = {key: value for key, value in hub_kwargs.items() if key in _HUB_DOWNLOAD_KWARGS and value is not None}
    if subfolder:
        hub_kwargs["subfolder"] = subfolder

    def download(filename):
        try:
            return hf_hub_download(location, filename, **hub_kwargs)
        except Exception:  # not in the repo, not cached offline, or no such repo: all mean "not this layout"
            return None

    if download("config.json") is not None:
        return None
    model_config = download("model_config.json")
    if model_config is None:
        return None
    for name in ORIGINAL_WEIGHT_FILES:
        weights = download(name)
        if weights is not None:
            return model_config, weights
    raise OriginalCheckpointError(
        f"{location} has an original model_config.json but neither {' nor '.join(ORIGINAL_WEIGHT_FILES)} could be "
        "found (offline without them in the cache?)."
    )


_HUB_DOWNLOAD_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")


_ON_THE_FLY_KWARGS = {
    "attn_implementation", "config", "dtype", "torch_dtype", "device_map", "subfolder", "trust_remote_code",
    *_HUB_DOWNLOAD_KWARGS,
}


def model_from_original_layout(location, **kwargs):
    """The model of a folder or Hub repo in the original layout, converted on the fly (None for any other layout).
    Takes the `from_pretrained` arguments that make sense for a conversion; refuses the others by name."""
    from transformers.utils import logging

    layout = find_original_layout(location, **kwargs)
    if layout is None:
        folder = os.path.join(str(location), kwargs.get("subfolder") or "")
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
            raise OriginalCheckpointError(
                f"{folder} holds no Stable Codec checkpoint: expected config.json + model.safetensors (this package's "
                f"format) or model_config.json + {' or '.join(ORIGINAL_WEIGHT_FILES)} (the original layout)."
            )
        return None
    unsupported = sorted(
        key for key, value in kwargs.items() if key not in _ON_THE_FLY_KWARGS and not key.startswith("_") and value is not None
    )
    if unsupported:
        raise ValueError(
            f"{unsupported} are not supported when converting an original checkpoint on the fly; convert it once "
            "with conversion/convert_stable_codec_checkpoint.py and load the result instead."
        )
    logging.get_logger(__name__).info(
        f"{location} is an original Stable Codec checkpoint ({os.path.basename(layout[1])}): converting it on the "
        "fly. `save_pretrained` the model to load it directly next time."
    )
    model = model_from_original(*layout, config=kwargs.get("config"))
    dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
    if dtype not in (None, "auto"):
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if kwargs.get("attn_implementation") is not None:
        model.set_attn_implementation(kwargs["attn_implementation"])
    device = kwargs.get("device_map")
    if device is not None:
        if not isinstance(device, (str, int, torch.device)) or device == "auto":
            raise ValueError("on-the-fly conversion places the model on one device: pass device_map='cuda:0' or similar.")
        model = model.to(device)
    return model


def feature_extractor_from_original_layout(location, **kwargs):
    """The feature extractor that fits an original-layout checkpoint (None for any other layout)."""
    from .feature_extraction_stable_codec import StableCodecFeatureExtractor

    layout = find_original_layout(location, **{key: kwargs.get(key) for key in ("subfolder", *_HUB_DOWNLOAD_KWARGS)})
    if layout is None:
        return None
    config = config_from_original(read_original_config(layout[0]))
    extractor = StableCodecFeatureExtractor(sampling_rate=config.sampling_rate, hop_length=config.hop_length)
    return (extractor, {}) if kwargs.get("return_unused_kwargs") else extractor


def register_original_layout_with_auto_classes():
    """AutoConfig, AutoModel and AutoFeatureExtractor look for config.json / preprocessor_config.json; a repo in the
    original layout has model_config.json instead.
    Where their own loading fails, fall back to the original layout (other models are untouched: the fallback only
    acts after their error, and re-raises it unless the location holds an original Stable Codec checkpoint)."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    from .feature_extraction_stable_codec import StableCodecFeatureExtractor
    from .modeling_stable_codec import StableCodecModel

    def load_config(location, *args, **kwargs):
        hub_kwargs = {key: kwargs.pop(key, None) for key in ("subfolder", *_HUB_DOWNLOAD_KWARGS)}
        config = config_from_original(read_original_config(find_original_layout(location, **hub_kwargs)[0]))
        # AutoModel asks for the kwargs the config did not consume, to pass them on to the model.
        return (config, kwargs) if kwargs.pop("return_unused_kwargs", False) else config

    def load_model(location, *args, **kwargs):
        return StableCodecModel.from_pretrained(location, *args, **kwargs)

    def load_feature_extractor(location, *args, **kwargs):
        return StableCodecFeatureExtractor.from_pretrained(location, **kwargs)

    for auto_class, load in (
        (AutoConfig, load_config), (AutoModel, load_model), (AutoFeatureExtractor, load_feature_extractor)
    ):
        add_original_layout_fallback(auto_class, load)


def add_original_layout_fallback(auto_class, load):
    original = auto_class.from_pretrained.__func__
    if getattr(original, "falls_back_to_original_layout", False):
        return

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return original(cls, pretrained_model_name_or_path, *args, **kwargs)
        except (OSError, ValueError):
            hub_kwargs = {key: kwargs.get(key) for key in ("subfolder", *_HUB_DOWNLOAD_KWARGS)}
            if find_original_layout(pretrained_model_name_or_path, **hub_kwargs) is None:
                raise
            return load(pretrained_model_name_or_path, *args, **kwargs)

    from_pretrained.falls_back_to_original_layout = True
    auto_class.from_pretrained = classmethod(from_pretrained)
