"""Reading checkpoints in the original layout (stable-audio-tools `model_config.json` + `model.ckpt` /
`model.safetensors`): the config translation and the one-to-one weight-name mapping.

Only what the released Stable Codec checkpoints and the paper use is accepted; any other option of the original
raises an error naming it, rather than converting into a model that computes something else.

A leaf module: the configuration, model and feature extractor build on it, and it imports none of them.
"""

import json
import math
import os
import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


class OriginalCheckpointError(ValueError):
    """The original config or weights do not describe a model this package implements exactly."""


def _require(condition: bool, message: str):
    if not condition:
        raise OriginalCheckpointError(message)


def original_config_kwargs(model_config: dict) -> dict:
    """Translates an original `model_config.json` (as a dict) into `StableCodecConfig` arguments."""
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
    _require(
        isinstance(patch_size, int) and patch_size > 0, "pretransform.config.patch_size must be a positive integer."
    )
    _require(
        model.get("io_channels", 1) == 1 and model_config.get("audio_channels", 1) == 1,
        "only mono models are supported.",
    )

    encoder, decoder = model["encoder"], model["decoder"]
    for name, section in (("encoder", encoder), ("decoder", decoder)):
        _require(
            section.get("type") == "taae", f"{name} type {section.get('type')!r} is not supported; only 'taae' is."
        )
        options = section.get("config", {})
        for flag in ("conformer", "use_snake", "use_dilated_conv", "soft_clip"):
            _require(
                not options.get(flag, False), f"{name} option {flag}=true is not supported (Stable Codec uses false)."
            )
        _require(
            options.get("layer_scale", True),
            f"{name} option layer_scale=false is not supported (Stable Codec uses true).",
        )
    encoder_options, decoder_options = encoder["config"], decoder["config"]

    # The original's TAAE defaults, for keys a config leaves out.
    defaults = {
        "channels": 128,
        "c_mults": [1, 2, 4, 8],
        "strides": [2, 4, 8, 8],
        "transformer_depths": [3, 3, 3, 3],
        "sliding_window": [63, 64],
    }
    architecture = {}
    for key, default in defaults.items():
        encoder_value, decoder_value = encoder_options.get(key, default), decoder_options.get(key, default)
        _require(
            encoder_value == decoder_value,
            f"encoder and decoder disagree on {key} ({encoder_value} vs {decoder_value}); only mirrored models are "
            "supported.",
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
        f"downsampling_ratio {model.get('downsampling_ratio')} does not match patch_size * prod(strides) = "
        f"{hop_length}.",
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
    _require(
        isinstance(fsq_levels, list) and len(fsq_levels) == latent_dim,
        f"FSQ levels {levels!r} do not fit latent_dim {latent_dim}.",
    )

    window = architecture["sliding_window"]
    _require(
        isinstance(window, list) and len(window) == 2 and all(isinstance(size, int) for size in window),
        f"sliding_window {window!r} is not a (left, right) pair of integers.",
    )
    return {
        "sampling_rate": model_config.get("sample_rate"),
        "patch_size": patch_size,
        "hidden_size": architecture["channels"],
        "channel_multipliers": architecture["c_mults"],
        "strides": architecture["strides"],
        "transformer_depths": architecture["transformer_depths"],
        "attention_window_left": window[0],
        "attention_window_right": window[1],
        "latent_dim": latent_dim,
        "fsq_levels": fsq_levels,
        "fsq_noise_dropout": bottleneck_options.get("noise_dropout", 0.05),
    }


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


def original_key_to_ours(key: str, num_stages: int) -> str | None:
    """Our name for an original weight, or None for an original key that has no place in our model."""
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
    num_stages: int,
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
                _require(
                    not torch.any(tensor), f"{key} is a non-zero layer norm bias, which Stable Codec does not have."
                )
            continue
        target = original_key_to_ours(key, num_stages)
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


ORIGINAL_WEIGHT_FILES = ("model.safetensors", "model.ckpt")  # the order the original's own loader tries them

# The `from_pretrained` arguments that say where and how to fetch files (the ones the Hub client takes first), which
# transformers' loaders consume rather than pass on: the one list every loader here filters with.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "subfolder", "token")
LOADING_KWARGS = (*HUB_KWARGS, "proxies", "trust_remote_code", "_commit_hash", "_from_auto", "_from_pipeline")


def split_loading_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """`from_pretrained`'s kwargs as (the Hub download arguments that are set, the arguments for the object)."""
    hub = {key: kwargs[key] for key in HUB_KWARGS if kwargs.get(key) is not None}
    return hub, {key: value for key, value in kwargs.items() if key not in LOADING_KWARGS}


@dataclass(frozen=True)
class OriginalLayout:
    """A checkpoint in the original layout: its `model_config.json` and its weights file."""

    model_config_path: str
    weights_path: str


# Hub files already looked up in this process: (repo, filename, subfolder, revision, cache_dir) -> path or None. A load
# reaches several loaders (AutoModel -> config -> model, feature extractor), and each asks; the Hub answers once.
_hub_lookups: dict[tuple, str | None] = {}


def _hub_file(repo_id: str, filename: str, **kwargs) -> str | None:
    from huggingface_hub import hf_hub_download

    # transformers passes the revision as an object of its own (the one asked for and the commit it resolved to),
    # new on every call: key on what was asked for.
    revision = kwargs.get("revision")
    revision = getattr(revision, "initial", revision) or "main"
    key = (repo_id, filename, kwargs.get("subfolder"), str(revision), str(kwargs.get("cache_dir")))
    if key in _hub_lookups and not kwargs.get("force_download"):
        return _hub_lookups[key]
    try:
        path = hf_hub_download(repo_id, filename, **kwargs)
    except Exception:  # not in the repo, not cached offline, or no such repo: all mean "not there"
        path = None
    _hub_lookups[key] = path
    return path


def find_original_layout(location, **kwargs) -> OriginalLayout | None:
    """The original-layout checkpoint at `location` (a folder or a Hub repo id, with `from_pretrained`'s Hub
    arguments), or None if it holds none or also holds this package's `config.json` (which then wins)."""
    location, options = str(location), split_loading_kwargs(kwargs)[0]
    subfolder = options.pop("subfolder", "")
    if os.path.isdir(location):
        folder = os.path.join(location, subfolder)
        if os.path.isfile(os.path.join(folder, "config.json")) or not os.path.isfile(
            os.path.join(folder, "model_config.json")
        ):
            return None
        for name in ORIGINAL_WEIGHT_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                return OriginalLayout(os.path.join(folder, "model_config.json"), os.path.join(folder, name))
        raise OriginalCheckpointError(
            f"{folder} has an original model_config.json but neither {' nor '.join(ORIGINAL_WEIGHT_FILES)}."
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(location)
    except HFValidationError:
        return None  # neither a folder nor a repo id: let the caller report it
    if subfolder:
        options["subfolder"] = subfolder
    # model_config.json first: for repos in this package's layout that single lookup settles it.
    model_config = _hub_file(location, "model_config.json", **options)
    if model_config is None or _hub_file(location, "config.json", **options) is not None:
        return None
    for name in ORIGINAL_WEIGHT_FILES:
        weights = _hub_file(location, name, **options)
        if weights is not None:
            return OriginalLayout(model_config, weights)
    raise OriginalCheckpointError(
        f"{location} has an original model_config.json but neither {' nor '.join(ORIGINAL_WEIGHT_FILES)} could be "
        "found (offline without them in the cache?)."
    )
