"""The ORIGINAL Stable Codec (stable-codec 0.1.2 on stable-audio-tools 0.0.17) built in this process for the
benchmark, used only as a library: its own factory builds the autoencoder from a config in its own layout, with its
own random initialization, and `OriginalCodec` encodes and decodes tensors the way `stable_codec.model.StableCodec`
does (minus its file loading, resampling and loudness normalization, which are preprocessing).

Measured as it ships without flash-attn, the setting of the anchors: every Attention computes FULL attention
(stable-audio-tools ignores `sliding_window` without flash-attn) through torch SDPA where CUDA exists, through its own
einsum path where it does not. If flash-attn happens to be importable, its flash path (fp16 with the window) is
switched off so that the measurement stays the anchors' one; the codec's `notes` say so.

Install (no dependencies: the autoencoder's import chain needs only these, torch, einops and placeholders for the
modules it imports but never calls):
    python3 -m pip install --no-deps --target DIR stable-audio-tools==0.0.17 stable-codec==0.1.2 \
        alias-free-torch==0.0.6 einops-exts==0.0.4
"""

import contextlib
import importlib.util
import io
import os
import tempfile

import torch

from conversion.original_reference import STUB_MODULES, autoencoder_model_config, install_stubs
from transformers_stable_codec import StableCodecConfig


ORIGINAL_PACKAGES = {
    "stable-audio-tools": "0.0.17",
    "stable-codec": "0.1.2",
    "alias-free-torch": "0.0.6",
    "einops-exts": "0.0.4",
}
# The autoencoder module imports torchaudio's transforms at the top but never calls them.
BENCHMARK_STUB_MODULES = STUB_MODULES + ["torchaudio", "torchaudio.transforms", "torchaudio.functional"]


def original_unavailable_reason() -> str | None:
    """Why the original cannot be built here, or None."""
    for module in ("stable_audio_tools", "alias_free_torch", "einops", "einops_exts"):
        if importlib.util.find_spec(module) is None:
            packages = " ".join(f"{name}=={version}" for name, version in ORIGINAL_PACKAGES.items())
            return f"{module} is not importable (install with pip --no-deps: {packages})"
    return None


def original_model_config(config: StableCodecConfig) -> dict:
    """The original layout's `model_config.json` (as a dict) for the architecture of `config`: the inverse of
    `StableCodecConfig.from_original_config`."""
    return autoencoder_model_config(
        sample_rate=config.sampling_rate,
        patch_size=config.patch_size,
        channels=config.hidden_size,
        c_mults=config.channel_multipliers,
        strides=config.strides,
        transformer_depths=config.transformer_depths,
        sliding_window=config.attention_window,
        latent_dim=config.latent_dim,
        levels=list(config.fsq_levels),
        noise_dropout=config.fsq_noise_dropout,
    )


class OriginalCodec:
    """The original autoencoder with StableCodec's encode (waveform -> training-FSQ tokens, shape (batch, frames, 1))
    and decode (tokens -> waveform) on tensors."""

    def __init__(self, autoencoder: torch.nn.Module, notes: list[str]):
        self.autoencoder = autoencoder
        self.notes = notes

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        _, info = self.autoencoder.encode_audio(audio, return_info=True, skip_bottleneck=False)
        return info["quantizer_indices"]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        latents = self.autoencoder.bottleneck.decode_tokens(tokens)  # (batch, frames, latent_dim)
        return self.autoencoder.decode_audio(latents.transpose(1, 2))

    @property
    def attention_label(self) -> str:
        return "full (sdpa)" if self._uses_sdpa() else "full (einsum)"

    def _uses_sdpa(self) -> bool:
        from stable_audio_tools.models.transformer import Attention

        return any(module.use_pt_flash for module in self.autoencoder.modules() if isinstance(module, Attention))


def build_original(model_config: dict, device: torch.device, seed: int = 0) -> OriginalCodec:
    """Builds the original autoencoder (float32, eval mode, random weights) with stable-audio-tools' factory."""
    reason = original_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    os.environ["ENABLE_TORCH_COMPILE"] = "0"  # its `compile` decorator stays a no-op, as shipped
    stubbed = install_stubs(tempfile.mkdtemp(prefix="original-stubs-"), BENCHMARK_STUB_MODULES)
    printed = io.StringIO()
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(printed), torch.device(device):
        from stable_audio_tools.models.factory import create_model_from_config
        from stable_audio_tools.models.transformer import Attention

        autoencoder = create_model_from_config(model_config)
    autoencoder = autoencoder.to(device).eval().requires_grad_(False)
    notes = [f"placeholder modules for the unused imports: {', '.join(stubbed) or 'none'}"]
    flash_switched_off = 0
    for module in autoencoder.modules():
        if isinstance(module, Attention) and module.use_fa_flash:
            module.use_fa_flash = False
            flash_switched_off += 1
    if flash_switched_off:
        notes.append(
            f"flash-attn is installed: its path was switched off in {flash_switched_off} attention modules "
            "(full attention, as without flash-attn)"
        )
    messages = sorted({line.strip() for line in printed.getvalue().splitlines() if line.strip()})
    notes.extend(f"it printed: {message}" for message in messages)
    return OriginalCodec(autoencoder, notes)
