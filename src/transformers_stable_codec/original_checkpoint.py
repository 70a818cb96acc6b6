"""Reading checkpoints in the original layout (stable-audio-tools `model_config.json` + `model.ckpt` /
`model.safetensors`): the config translation and the one-to-one weight-name mapping.

Only what the released Stable Codec checkpoints and the paper use is accepted; any other option of the original
raises an error naming it, rather than converting into a model that computes something else.
"""

import math
import re

import torch

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
    original_state_dict: dict[str, torch.Tensor], config: StableCodecConfig, expected_keys: set[str]
) -> dict[str, torch.Tensor]:
    """Maps every original weight onto our names. Raises `OriginalCheckpointError` listing the missing and
    unexpected keys if the checkpoint and the config do not describe the same model."""
    converted, unexpected = {}, []
    for key, tensor in original_state_dict.items():
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


def model_from_original(model_config_path, checkpoint_path, **config_overrides):
    """Builds a `StableCodecModel` from an original `model_config.json` and its weights (in eval mode)."""
    import json

    from .modeling_stable_codec import StableCodecModel

    try:
        with open(model_config_path) as handle:
            original_config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise OriginalCheckpointError(f"could not read the original config {model_config_path}: {error}") from error
    config = config_from_original(original_config, **config_overrides)
    model = StableCodecModel(config)
    state_dict = convert_original_state_dict(
        load_original_weights(checkpoint_path), config, set(model.state_dict().keys())
    )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
