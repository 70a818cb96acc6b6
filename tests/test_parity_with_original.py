"""Parity with the original implementation (stable-codec 0.1.2 on stable-audio-tools 0.0.17), through fixtures that
tests/fixtures/make_parity_fixtures.py recorded with the original's exact window and rounding FSQ (see its README).

Tolerances of the issue: fp32 relative error below 1e-4 on latents and audio, at least 99.9% identical codes.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from transformers_stable_codec import POSTHOC_BOTTLENECK_PRESETS, StableCodecModel

from .conftest import FIXTURES, relative_error, requires_cuda, skip_unless_flash_attention_installed


CONFIG_NAMES = ["small_a", "small_b"]
# Presets whose stages rebuild the 17-level grid of the training FSQ exactly: their audio is `audio_from_codes`.
GRID_PRESETS = ["2x15625_700bps", "4x729_1000bps"]


def load_fixture(name: str, attn_implementation: str = "sdpa", device="cpu", dtype=torch.float32):
    folder = FIXTURES / "parity" / name
    model = StableCodecModel.from_original_checkpoint(folder / "model_config.json", folder / "model.safetensors")
    model.set_attn_implementation(attn_implementation)
    reference = load_file(folder / "reference.safetensors")
    return model.to(device=device, dtype=dtype), reference


def code_agreement(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.cpu() == expected.cpu()).double().mean())


def measure_parity(model, reference) -> dict[str, float]:
    """Relative errors of latents and audio, and the fraction of identical codes, against the original's outputs."""
    device, dtype = model.device, model.dtype
    input_values = reference["input_values"].to(device, dtype)
    results = {}
    with torch.no_grad():
        encoded = model.encode(input_values)
        results["latents"] = relative_error(encoded.latents.float().cpu(), reference["latents"])
        results["codes"] = code_agreement(encoded.audio_codes, reference["codes"].transpose(1, 2))
        decoded = model.decode(reference["codes"].transpose(1, 2).to(device)).audio_values
        results["audio"] = relative_error(decoded.float().cpu(), reference["audio_from_codes"])
        for preset in POSTHOC_BOTTLENECK_PRESETS:
            expected_codes = reference[f"codes.{preset}"].permute(1, 0, 2)  # (stages, batch, frames) -> ours
            codes = model.encode(input_values, posthoc_bottleneck=preset).audio_codes
            results[f"codes.{preset}"] = code_agreement(codes, expected_codes)
            audio = model.decode(expected_codes.to(device), posthoc_bottleneck=preset).audio_values.float().cpu()
            expected_audio = reference["audio_from_codes" if preset in GRID_PRESETS else f"audio.{preset}"]
            results[f"audio.{preset}"] = relative_error(audio, expected_audio)
    return results


def check_parity(model, reference, latent_tol, audio_tol, min_code_agreement):
    results = measure_parity(model, reference)
    for key, value in results.items():
        if key.startswith("codes"):
            assert value >= min_code_agreement, (key, value)
        else:
            assert value < (latent_tol if key == "latents" else audio_tol), (key, value)
    return results


@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_fp32_parity_on_cpu(name, attn_implementation):
    model, reference = load_fixture(name, attn_implementation)
    check_parity(model, reference, latent_tol=1e-4, audio_tol=1e-4, min_code_agreement=0.999)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_the_window_matters_in_the_fixtures(name):
    """Full attention (the original's silent fallback without flash-attn) gives clearly different latents, and the
    fixture configs keep the window much shorter than the sequences."""
    model, reference = load_fixture(name)
    assert max(model.config.attention_window) * 4 < reference["latents"].shape[-1]
    assert relative_error(reference["latents_full_attention"], reference["latents"]) > 1e-2
    model.config.attention_window_left = model.config.attention_window_right = 10_000
    with torch.no_grad():
        full = model.encode(reference["input_values"]).latents
    assert relative_error(full, reference["latents_full_attention"]) < 1e-4


def test_fixture_configs_cover_the_architecture():
    configs = [json.loads((FIXTURES / "parity" / name / "model_config.json").read_text()) for name in CONFIG_NAMES]
    encoders = [config["model"]["encoder"]["config"] for config in configs]
    widths = {config["channels"] * multiplier for config in encoders for multiplier in config["c_mults"]}
    assert 256 in widths  # two heads: the head split is checked against the original
    assert any(stride > 1 for config in encoders for stride in config["strides"])
    assert any(config["strides"][0] == 1 and config["c_mults"][0] == 1 for config in encoders)  # a block with no conv


# --- on the device GPU ----------------------------------------------------------------------------------------------


GPU_BACKENDS = ["eager", "sdpa", "flex_attention"]


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("attn_implementation", GPU_BACKENDS)
def test_fp32_parity_on_gpu(name, attn_implementation, monkeypatch):
    # cuDNN convolutions default to TF32 on Ampere and newer; exact fp32 means turning that off.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, reference = load_fixture(name, attn_implementation, device="cuda")
    check_parity(model, reference, latent_tol=1e-4, audio_tol=1e-4, min_code_agreement=0.999)


def levels_apart(codes: torch.Tensor, expected: torch.Tensor, levels: int = 17, channels: int = 6) -> torch.Tensor:
    """Per-channel distance, in quantization levels, between two training-FSQ codes."""
    basis = levels ** torch.arange(channels)
    return ((codes[..., None] // basis) % levels - (expected[..., None] // basis) % levels).abs()


def test_bf16_parity_on_cpu():
    model, reference = load_fixture("small_b", "sdpa", dtype=torch.bfloat16)
    check_bf16_parity(model, reference)


def check_bf16_parity(model, reference):
    # bf16 keeps 8 bits of mantissa: latents move by a few percent, so codes near a level boundary move by one level.
    with torch.no_grad():
        encoded = model.encode(reference["input_values"].to(model.device, model.dtype))
        decoded = model.decode(reference["codes"].transpose(1, 2).to(model.device)).audio_values
    assert relative_error(encoded.latents.float().cpu(), reference["latents"]) < 0.1
    assert relative_error(decoded.float().cpu(), reference["audio_from_codes"]) < 2e-2
    distance = levels_apart(encoded.audio_codes.cpu(), reference["codes"].transpose(1, 2))
    assert float((distance == 0).double().mean()) > 0.7 and float((distance <= 1).double().mean()) > 0.99


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name", CONFIG_NAMES)
@pytest.mark.parametrize("attn_implementation", GPU_BACKENDS + ["flash_attention_2", "flash_attention_4"])
def test_bf16_parity_on_gpu(name, attn_implementation):
    skip_unless_flash_attention_installed(attn_implementation)
    model, reference = load_fixture(name, attn_implementation, device="cuda", dtype=torch.bfloat16)
    check_bf16_parity(model, reference)
