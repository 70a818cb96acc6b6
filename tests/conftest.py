import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import transformers_stable_codec  # noqa: F401  (registers the Auto classes)
from transformers_stable_codec import StableCodecModel

from .model_helpers import tiny_config


FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter, so that LayerScale and zero biases cannot hide mistakes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("scale"):
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.4 + 0.2)
            elif name.endswith("norm.weight"):
                parameter.copy_(1 + 0.2 * torch.randn(parameter.shape, generator=generator))
            elif name.endswith("original0"):  # weight-norm magnitude
                parameter.copy_(parameter.abs() * (0.8 + 0.4 * torch.rand(parameter.shape, generator=generator)))
            elif parameter.dim() == 1:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="session")
def tiny_model() -> StableCodecModel:
    torch.manual_seed(0)
    return randomize_(StableCodecModel(tiny_config())).eval()


def accelerate_cpu_launch(processes: int, mixed_precision: str, module: str, *arguments: str) -> list[str]:
    """The command that runs `python -m module arguments` as `processes` ranks through `accelerate launch`. Without
    GPUs, `--multi_gpu` with ACCELERATE_USE_CPU=true in the environment starts one CPU process per rank, over gloo."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
        "-m",
        module,
        *arguments,
    ]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")


def skip_unless_flash_attention_installed(implementation: str) -> None:
    """Skips a test of `flash_attention_2` / `flash_attention_4` where that package is not installed; other
    implementations go on."""
    import transformers.utils

    if implementation.startswith("flash_attention"):
        version = implementation[-1]
        if not getattr(transformers.utils, f"is_flash_attn_{version}_available")():
            pytest.skip(
                f"FlashAttention {version} is not installed on this GPU machine (FlashAttention-4: "
                "scripts/carry_flash_attn_4.sh)"
            )


def synthesize_speech(path: pathlib.Path, text: str, sampling_rate: int = 16000, channels: int = 1) -> pathlib.Path:
    """Real speech: espeak-ng (22.05 kHz mono), converted by sox to the rate, channel count and format of `path`'s
    suffix (.wav, .flac)."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.fail("espeak-ng and sox are needed (apt-get install espeak-ng sox); .ci/run installs them")
    raw = path.with_name(path.stem + ".espeak.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(sampling_rate), "-c", str(channels), "-b", "16", str(path)],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    return path


# Our stand-ins for modules transformers' sdist leaves out (tests/transformers_common.py): imported, never collected.
collect_ignore = ["transformers_common_standins"]


def pytest_configure(config):
    # The marks transformers' common tests carry (declared in transformers' own pytest configuration).
    for mark in (
        "accelerate_tests",
        "flash_attn_test",
        "flash_attn_3_test",
        "flash_attn_4_test",
        "torch_compile_test",
    ):
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' common model tests")
