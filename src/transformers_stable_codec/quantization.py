"""Low-precision inference through torchao: fp8 (Hopper / Ada GPUs) and int8 (CPUs) for the projections of the
transformer layers, everything else in the model's own dtype.

What is quantized: the four `nn.Linear` layers of every transformer layer (the fused QKV projection, the attention
output projection, the SwiGLU input and output projections), 96 % of the paper-scale model's FLOPs. What is not: the
convolutions (patch embedding, down- and upsampling, latent projections), LayerNorms, LayerScales and the FSQ
bottleneck, which are small, precision-sensitive (the latents are rounded onto the FSQ grid), or not matmuls; and any
`nn.Linear` whose sizes the low-precision matmul kernels cannot take (`torch._scaled_mm` needs multiples of 16).

Activations are quantized on the fly per row (token) and weights once per output channel; `torch.compile` fuses the
activation scaling and cast into the surrounding elementwise kernels.

    from transformers_stable_codec.quantization import quantization_config
    model = StableCodecModel.from_pretrained(name, dtype=torch.bfloat16, device_map="cuda",
                                             quantization_config=quantization_config("fp8"))
"""

import torch
from torch import nn


PRECISIONS = ("fp8", "int8")
# `torch._scaled_mm` (fp8) needs both matrix sizes divisible by 16; `torch._int_mm` (int8, CUDA) by 8.
SIZE_MULTIPLE = 16
FP8_MIN_CAPABILITY = (8, 9)


def torchao_config(precision: str):
    """torchao's config for `precision`: fp8 e4m3 with rowwise scales, or int8 with per-token / per-channel scales."""
    check_precision(precision)
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8DynamicActivationInt8WeightConfig,
            PerRow,
        )
    except ImportError:
        raise ImportError(
            f"{precision} inference needs torchao: pip install 'transformers-stable-codec[quantization]'"
        ) from None
    # set_inductor_config=False: torchao would otherwise change process-wide settings when quantizing (TF32 for
    # float32 matmuls, coordinate-descent tuning that lengthens every later compile), which also alters the models
    # around it (an fp32 reference, a bf16 model compiled next to the quantized one).
    if precision == "fp8":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown quantized precision {precision!r}; choose one of {list(PRECISIONS)}.")


def quantizable(module: nn.Module, name: str = "") -> bool:
    """Whether torchao should quantize `module`: a transformer layer's `nn.Linear` of kernel-friendly sizes."""
    if not isinstance(module, nn.Linear) or ".transformer.layers." not in f".{name}":
        return False
    return module.in_features % SIZE_MULTIPLE == 0 and module.out_features % SIZE_MULTIPLE == 0


def modules_to_not_convert(model: nn.Module) -> list[str]:
    """The `nn.Linear` layers of `model` that stay in high precision (none in the model as configured today; the
    list guards configurations with odd widths)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not quantizable(module, name)
    ]


def quantization_config(precision: str, config=None):
    """`transformers.TorchAoConfig` for `from_pretrained(..., quantization_config=...)`. With the model's `config`,
    layers whose sizes the kernels cannot take are named in `modules_to_not_convert`."""
    from transformers import TorchAoConfig

    skipped = None
    if config is not None:
        from .modeling_stable_codec import StableCodecModel

        with torch.device("meta"):
            skipped = modules_to_not_convert(StableCodecModel(config))
    return TorchAoConfig(torchao_config(precision), modules_to_not_convert=skipped or None)


def precision_of_torchao_config(quant_type) -> str | None:
    """'fp8' or 'int8' for the configs this module makes (or equivalent ones), None for any other torchao config."""
    name = type(quant_type).__name__
    if name.startswith("Float8"):
        return "fp8"
    if name.startswith("Int8"):
        return "int8"
    return None


def requested_quantization(quantization_config) -> str | None:
    """'fp8' / 'int8' where `from_pretrained`'s `quantization_config` asks for torchao in that precision."""
    quant_type = getattr(quantization_config, "quant_type", None)
    if quant_type is None and isinstance(quantization_config, dict):
        quant_type = quantization_config.get("quant_type")
    return None if quant_type is None else precision_of_torchao_config(quant_type)


def loading_device(device_map) -> torch.device:
    """The device `from_pretrained` puts the weights on, for the fp8 check before loading (a mapping: its first
    device; 'auto': the first GPU if there is one)."""
    if isinstance(device_map, dict):
        device_map = next(iter(device_map.values()), "cpu")
    if device_map is None:
        return torch.device("cpu")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return torch.device(device_map)


def check_device(precision: str, device, dtype: torch.dtype | None = None) -> None:
    """Raises a `ValueError` saying why `precision` cannot run on `device` (in activations of `dtype`)."""
    check_precision(precision)
    if precision != "fp8":
        return
    if dtype is not None and dtype != torch.bfloat16:
        raise ValueError(
            f"fp8 runs the model in bfloat16 around the fp8 matmuls (their rowwise scales give bfloat16 outputs); got "
            f"dtype {dtype}. Pass dtype=torch.bfloat16."
        )
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(
            f"fp8 needs a CUDA GPU of compute capability {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or newer "
            f"(Ada, Hopper, Blackwell); the model is on {device.type}. On CPU use int8; on a GPU load with "
            "device_map='cuda'."
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise ValueError(
            f"fp8 needs a GPU of compute capability {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} or newer; "
            f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}. Use bf16 there."
        )


def quantize_model(model: nn.Module, precision: str) -> list[str]:
    """Quantizes a loaded model's transformer projections in place (what `from_pretrained` with
    `quantization_config(precision)` does while loading); returns the names of the quantized layers."""
    from torchao.quantization import quantize_

    parameter = next(model.parameters())
    check_device(precision, parameter.device, parameter.dtype)
    quantize_(model, torchao_config(precision), filter_fn=quantizable)
    return quantized_layer_names(model)


def quantized_layer_names(model: nn.Module) -> list[str]:
    """Names of the modules whose weight is a torchao quantized tensor."""
    from torchao.utils import TorchAOBaseTensor

    return [
        name
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), TorchAOBaseTensor)
    ]
