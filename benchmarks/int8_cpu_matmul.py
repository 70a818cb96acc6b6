#!/usr/bin/env python
"""Which int8 path is fastest on this CPU, at the matmul level: each projection shape of the paper-scale model (one
10 s clip: 500 tokens in the first stage) as bf16 and as int8 along the two routes, timed as interleaved calls
(round after round, every path once), with the ratio to bf16 per round:

- `bf16` / `bf16 frozen`: `nn.Linear` in bf16, eager and compiled with inductor's freezing (oneDNN / AMX-BF16),
- `torchao int8` / `torchao int8 frozen`: torchao's int8 dynamic-activation / int8-weight tensors (what
  `transformers_stable_codec.quantization` uses), eager and compiled with freezing,
- `oneDNN int8 frozen`: PT2E export + `X86InductorQuantizer` (dynamic int8 activations), compiled with freezing,
  which lowers to oneDNN's quantized linear (AMX-INT8 where the CPU has it),
- `oneDNN int8 kernel alone`: that quantized linear's kernel on activations quantized beforehand (static scale, no
  quantizing pass): not a route, the ceiling of what the int8 kernels give on this CPU.

    PYTHONPATH=src python benchmarks/int8_cpu_matmul.py --json benchmarks/results/int8_cpu_matmul.json
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch
from torch._inductor import config as inductor_config

from benchmarks.benchmark_codecs import load_config, machine_info, versions, where_label
from transformers_stable_codec.quantization import torchao_config


def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of the four projections at the first stage's width."""
    width = config.stage_widths[0]
    inner = width * config.ff_mult
    return {
        "qkv_proj": (width, 3 * width),
        "o_proj": (width, width),
        "input_proj": (width, 2 * inner),
        "output_proj": (inner, width),
    }


def frozen(module: torch.nn.Module, example: torch.Tensor):
    compiled = torch.compile(module, fullgraph=True, dynamic=False)

    def call(inputs):
        with inductor_config.patch(freezing=True):
            return compiled(inputs)

    call(example)
    return call


def onednn_int8(linear: torch.nn.Linear, example: torch.Tensor):
    """PT2E dynamic int8 of one float32 Linear, run under bf16 autocast like the rest of a bf16 model."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_dynamic=True))
    exported = torch.export.export(torch.nn.Sequential(linear), (example,)).module()
    prepared = prepare_pt2e(exported, quantizer)
    prepared(example)
    run = frozen(convert_pt2e(prepared), example)

    def call(inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run(inputs.float())

    return call


def onednn_int8_kernel_alone(linear: torch.nn.Linear, example: torch.Tensor):
    """oneDNN's int8 matmul (prepacked per-channel int8 weights, AMX-INT8 where the CPU has it) on activations that are
    already uint8 with one static scale: no quantizing pass, no calibration. Not a usable route, the ceiling: what any
    int8 route's kernels could reach on this CPU. The call ignores its argument, multiplying the quantized example."""
    weight_scales = (linear.weight.abs().amax(dim=1) / 127).float()
    weight = torch.round(linear.weight / weight_scales[:, None]).clamp(-127, 127).to(torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(weight, list(example.shape))
    input_scale = float(example.abs().max()) / 127
    quantized = (torch.round(example / input_scale) + 128).clamp(0, 255).to(torch.uint8)
    zero_points = torch.zeros(linear.out_features, dtype=torch.int32)

    def call(_inputs):
        return torch.ops.onednn.qlinear_pointwise(
            quantized,
            input_scale,
            128,
            packed,
            weight_scales,
            zero_points,
            linear.bias.float(),
            1.0,
            0,
            torch.bfloat16,
            "none",
            [],
            "",
        )

    return call


def paths(linear: torch.nn.Linear, tokens: int) -> dict:
    from torchao.quantization import quantize_

    example = torch.randn(tokens, linear.in_features)
    bf16 = copy.deepcopy(linear).bfloat16()
    int8 = copy.deepcopy(bf16)
    quantize_(int8, torchao_config("int8"))
    example_bf16 = example.bfloat16()
    built = {
        "bf16": bf16,
        "bf16 frozen": frozen(bf16, example_bf16),
        "torchao int8": int8,
        "torchao int8 frozen": frozen(int8, example_bf16),
    }
    try:
        built["oneDNN int8 frozen"] = onednn_int8(copy.deepcopy(linear), example)
    except Exception as error:  # noqa: BLE001  (a route that fails to build is a result)
        built["oneDNN int8 frozen"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    try:
        built["oneDNN int8 kernel alone"] = onednn_int8_kernel_alone(linear, example)
    except Exception as error:  # noqa: BLE001
        built["oneDNN int8 kernel alone"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return built, example_bf16


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper")
    parser.add_argument("--tokens", type=int, default=500, help="rows of the activations (500: 10 s, stage 1)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    results = {"where": where_label(device), "machine": machine_info(device), "versions": versions(None)}
    results["settings"] = {"config": args.config, "tokens": args.tokens, "rounds": args.rounds}
    results["shapes"] = {}
    torch.manual_seed(0)
    for name, (fan_in, fan_out) in projection_shapes(load_config(args.config)).items():
        torch._dynamo.reset()  # every shape compiles `nn.Linear.forward` anew; the recompile limit is per function
        with torch.no_grad():
            built, inputs = paths(torch.nn.Linear(fan_in, fan_out), args.tokens)
        runnable = {key: value for key, value in built.items() if callable(value)}
        times = {key: [] for key in runnable}
        with torch.inference_mode():
            for _ in range(2):
                for call in runnable.values():
                    call(inputs)
            for _ in range(args.rounds):
                for key, call in runnable.items():
                    start = time.perf_counter()
                    call(inputs)
                    times[key].append(time.perf_counter() - start)
        flops = 2 * args.tokens * fan_in * fan_out
        entry = results["shapes"][name] = {"in": fan_in, "out": fan_out, "paths": {}}
        for key, value in built.items():
            if not callable(value):
                entry["paths"][key] = {"status": "error", "reason": value}
                continue
            ratios = [base / own for base, own in zip(times["bf16 frozen"], times[key])]
            entry["paths"][key] = {
                "status": "ok",
                "times_s": times[key],
                "median_ms": 1e3 * statistics.median(times[key]),
                "tflops": flops / statistics.median(times[key]) / 1e12,
                "speedup_vs_bf16_frozen": {
                    "median": statistics.median(ratios),
                    "min": min(ratios),
                    "max": max(ratios),
                },
            }
        print(f"{name} ({fan_in} -> {fan_out}, {args.tokens} tokens):", flush=True)
        for key, path in entry["paths"].items():
            if path["status"] != "ok":
                print(f"  {key}: {path['reason']}")
                continue
            ratio = path["speedup_vs_bf16_frozen"]
            print(
                f"  {key}: {path['median_ms']:.2f} ms, {path['tflops']:.2f} TFLOP/s, vs bf16 frozen "
                f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
