"""Makes the ORIGINAL Stable Codec (stable-codec 0.1.2 on stable-audio-tools 0.0.17) compute the function it was
meant to compute, so that it can serve as the reference: imported by the parity-fixture script and by the
converter's --verify, in an environment where the original is importable. The original is only used as a library.

- Its Attention ignores `sliding_window` without flash-attn (full attention) and casts to fp16 with it:
  `set_attention_mode(model, "window")` routes every Attention through its fp32 SDPA path with the exact band mask.
- stable-audio-tools' DitheredFSQ truncates indices: `replace_quantizer` swaps in stable-codec's rounding one.
- Its import chain needs modules the autoencoder never calls: `install_stubs` writes placeholders for missing ones.
"""

import importlib.util
import math
import os
import sys


STUB_MODULES = [
    "k_diffusion",
    "pytorch_lightning",
    "pytorch_lightning.loggers",
    "pytorch_lightning.callbacks",
    "pytorch_lightning.utilities",
    "pytorch_lightning.utilities.rank_zero",
    "wandb",
    "matplotlib",
    "matplotlib.backends",
    "matplotlib.backends.backend_agg",
    "matplotlib.cm",
    "matplotlib.colors",
    "matplotlib.figure",
    "matplotlib.ticker",
    "PIL",
    "PIL.Image",
]

STUB_SOURCE = '''"""Placeholder for a module the original imports but the autoencoder never calls."""


class _Placeholder:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError("placeholder module " + __name__ + " was called")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_Placeholder,), {})
'''


def install_stubs(stub_dir, modules=STUB_MODULES):
    """Write placeholder packages for the missing top-level modules among `modules`; append to sys.path."""
    missing_tops = sorted({m.split(".")[0] for m in modules if importlib.util.find_spec(m.split(".")[0]) is None})
    for mod in modules:
        if mod.split(".")[0] not in missing_tops:
            continue
        pkg_dir = os.path.join(stub_dir, *mod.split("."))
        os.makedirs(pkg_dir, exist_ok=True)
        with open(os.path.join(pkg_dir, "__init__.py"), "w") as f:
            f.write(STUB_SOURCE)
    sys.path.append(stub_dir)  # appended: real installed packages win
    return missing_tops


def autoencoder_model_config(
    *,
    sample_rate,
    patch_size,
    channels,
    c_mults,
    strides,
    transformer_depths,
    sliding_window,
    latent_dim,
    levels,
    noise_dropout=None,
    sample_size=None,
):
    """The original layout's `model_config.json` (as a dict) of a Stable Codec autoencoder: patched pretransform,
    mirrored TAAE encoder and decoder, dithered FSQ bottleneck."""
    stages = {
        "channels": channels,
        "c_mults": list(c_mults),
        "strides": list(strides),
        "latent_dim": latent_dim,
        "transformer_depths": list(transformer_depths),
        "sliding_window": list(sliding_window),
        "checkpointing": False,
        "conformer": False,
        "layer_scale": True,
        "use_dilated_conv": False,
        "use_snake": False,
    }
    bottleneck = {"dim": latent_dim, "levels": levels, "num_codebooks": 1, "dither_inference": False}
    if noise_dropout is not None:
        bottleneck["noise_dropout"] = noise_dropout
    config = {"model_type": "autoencoder", "sample_rate": sample_rate, "audio_channels": 1}
    if sample_size is not None:
        config["sample_size"] = sample_size
    config["model"] = {
        "pretransform": {"type": "patched", "config": {"channels": 1, "patch_size": patch_size}},
        "encoder": {"type": "taae", "config": {"in_channels": patch_size, **stages}},
        "decoder": {"type": "taae", "config": {**stages, "out_channels": patch_size}},
        "bottleneck": {"type": "dithered_fsq", "config": bottleneck},
        "latent_dim": latent_dim,
        "downsampling_ratio": patch_size * math.prod(strides),
        "io_channels": 1,
    }
    return config


def band_mask(q_len, k_len, left, right, device):
    """True = attend.  flash-attn window_size semantics (non-causal, q_len == k_len):
    query i attends key j iff i - left <= j <= i + right; -1 means unbounded."""
    import torch

    i = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    j = torch.arange(k_len, device=device)[None, :]
    m = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if left >= 0:
        m &= j >= i - left
    if right >= 0:
        m &= j <= i + right
    return m[None, None]


def set_attention_mode(model, mode):
    """mode: 'window' (intended exact band, fp32 SDPA), 'full' (SDPA, no mask),
    'original' (unpatched original code path, i.e. its CPU fallback)."""
    from stable_audio_tools.models.transformer import Attention

    n = 0
    for m in model.modules():
        if not isinstance(m, Attention):
            continue
        n += 1
        if not hasattr(m, "_parity_orig_flags"):
            m._parity_orig_flags = (m.use_fa_flash, m.use_pt_flash)
        m.__dict__.pop("flash_attn", None)
        if mode == "original":
            m.use_fa_flash, m.use_pt_flash = m._parity_orig_flags
            continue
        m.use_fa_flash, m.use_pt_flash = False, True
        cls_flash_attn = type(m).flash_attn

        def flash_attn(q, k, v, mask=None, causal=None, _m=m, _window=(mode == "window")):
            if _window:
                left, right = _m.sliding_window
                band = band_mask(q.shape[-2], k.shape[-2], left, right, q.device)
                mask = band if mask is None else (mask & band)
            return cls_flash_attn(_m, q, k, v, mask=mask, causal=causal)

        m.flash_attn = flash_attn
    assert n > 0
    return n


def replace_quantizer(ae):
    from stable_codec.fsq import DitheredFSQ as SCDitheredFSQ

    old = ae.bottleneck.quantizer
    new = SCDitheredFSQ(
        levels=list(old.levels),
        dither_inference=old.dither_inference,
        num_codebooks=old.num_codebooks,
        noise_dropout=old.noise_dropout,
    )
    ae.bottleneck.quantizer = new.eval().requires_grad_(False)
