"""What the tests build their models and audio from; the benchmarks' smoke runs use the same (they import from here).
Kept apart from conftest.py so that importing them does not import pytest's fixtures."""

import math

import torch

from transformers_stable_codec import StableCodecConfig


# Two small stages (50 Hz then 25 Hz), short windows: small enough for a 2-core CPU, rich enough to break.
TINY_CONFIG = dict(
    hidden_size=128,
    channel_multipliers=[1, 2],
    strides=[1, 2],
    transformer_depths=[1, 2],
    attention_window_left=3,
    attention_window_right=4,
)


def tiny_config(**overrides) -> StableCodecConfig:
    return StableCodecConfig(**{**TINY_CONFIG, **overrides})


def speechlike_audio(
    batch: int, num_samples: int, sampling_rate: int, device: torch.device, seed: int = 0
) -> torch.Tensor:
    """Synthetic voiced speech, float32 (batch, 1, samples): harmonics of a wandering pitch (90-250 Hz, a different
    voice per clip) under a syllable envelope of about 4 Hz, plus breath noise; peaks near 0.5."""
    generator = torch.Generator(device=device).manual_seed(seed)
    time_s = torch.arange(num_samples, device=device, dtype=torch.float64) / sampling_rate
    base = 90 + 160 * torch.rand(batch, 1, device=device, dtype=torch.float64, generator=generator)
    drift = torch.rand(batch, 1, device=device, dtype=torch.float64, generator=generator) * 2 * math.pi
    pitch = base * (1 + 0.08 * torch.sin(2 * math.pi * 0.7 * time_s + drift))
    phase = torch.remainder(torch.cumsum(2 * math.pi * pitch / sampling_rate, dim=-1), 2 * math.pi).float()
    del pitch
    voiced = sum(torch.sin(harmonic * phase) / harmonic for harmonic in range(1, 7))
    envelope = torch.sin(2 * math.pi * 2.1 * time_s.float() + drift.float()).abs() ** 2
    noise = 0.02 * torch.randn(batch, num_samples, device=device, generator=generator)
    return (0.3 * voiced * envelope + noise)[:, None, :]


def speechlike(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """`speechlike_audio` at 16 kHz, (batch, 1, samples), on CPU."""
    return speechlike_audio(batch, int(16000 * seconds), 16000, torch.device("cpu"), seed)


def fold_weight_norms(model: torch.nn.Module) -> None:
    """Replaces every weight-norm parametrization of `model` by the weight it computes, in place. Inductor's
    freezing folds them too, in eager kernels whose rounding differs from the fused kernel of an unfrozen compile;
    folded beforehand, frozen and unfrozen compiles of one model compute the same."""
    from torch.nn.utils import parametrize

    with torch.no_grad():
        for module in list(model.modules()):
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
