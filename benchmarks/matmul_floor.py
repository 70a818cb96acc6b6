#!/usr/bin/env python
"""The time one compiled encode + decode cannot go below while its projections run as matmuls of their own: every
`nn.Linear` call of one encode + decode (paper-scale model, bf16, 16 x 10 s by default) is recorded with its shape,
and each distinct shape is timed alone with cuBLAS (what the compiled model calls) and with the fastest Triton
template inductor's max-autotune finds (what a matmul with a fused prologue or epilogue would be built from). The
sums over all calls are the floors against the time per call that 8,000x real time allows.

    python3 benchmarks/matmul_floor.py --json $OUT/matmul_floor.json            # on the GPU machine

docs/benchmarks.md quotes its figures.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F


REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from benchmarks.profile_kernels import add_workload_arguments, bf16_model_and_batch
from transformers_stable_codec import StableCodecModel


TRITON_ONLY = {
    "max_autotune": True,
    "max_autotune_gemm_backends": "TRITON",
    "triton.enable_persistent_tma_matmul": True,
}


def linear_calls(model: StableCodecModel, audio: torch.Tensor) -> Counter:
    """`(rows, in_features, out_features, has_bias)` of every `nn.Linear` call of one encode + decode, counted."""
    calls = Counter()

    def record(module, inputs, output):
        rows = inputs[0].numel() // module.in_features
        calls[(rows, module.in_features, module.out_features, module.bias is not None)] += 1

    hooks = [module.register_forward_hook(record) for module in model.modules() if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        model.decode(model.encode(audio).audio_codes)
    for hook in hooks:
        hook.remove()
    return calls


def gpu_ms(function, *args, iterations: int = 50) -> float:
    """Mean GPU time of back-to-back calls: kernels of tens of microseconds, which `profile_kernels.time_call`'s
    synchronize around each call would time together with their launch."""
    for _ in range(5):
        function(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iterations):
        function(*args)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iterations


def time_shape(rows: int, in_features: int, out_features: int, has_bias: bool, dtype: torch.dtype) -> dict:
    inputs = torch.randn(rows, in_features, device="cuda", dtype=dtype)
    weight = torch.randn(out_features, in_features, device="cuda", dtype=dtype) * in_features**-0.5
    bias = torch.randn(out_features, device="cuda", dtype=dtype) if has_bias else None
    cublas_ms = gpu_ms(F.linear, inputs, weight, bias)
    torch._dynamo.reset()
    with inductor_config.patch(TRITON_ONLY):
        triton_linear = torch.compile(F.linear, fullgraph=True, dynamic=False)
        expected = F.linear(inputs, weight, bias).float()
        error = (triton_linear(inputs, weight, bias).float() - expected).norm() / expected.norm()
    if error > 1e-2:
        raise RuntimeError(f"inductor's Triton matmul is off by {error:.1e} at {rows}x{in_features}x{out_features}")
    triton_ms = gpu_ms(triton_linear, inputs, weight, bias)
    return {"cublas_ms": cublas_ms, "triton_ms": triton_ms, "gflop": 2 * rows * in_features * out_features / 1e9}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--target", type=float, default=8000.0, help="x real time the call budget is derived from")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device: it times cuBLAS and inductor's Triton matmuls")

    model, audio = bf16_model_and_batch(args)
    calls = linear_calls(model, audio)
    del model

    rows, totals = [], {"cublas_ms": 0.0, "triton_ms": 0.0, "gflop": 0.0}
    for (tokens, in_features, out_features, has_bias), count in sorted(calls.items()):
        timing = time_shape(tokens, in_features, out_features, has_bias, torch.bfloat16)
        for key in totals:
            totals[key] += count * timing[key]
        shape = {"rows": tokens, "in": in_features, "out": out_features, "bias": has_bias, "calls": count}
        rows.append({**shape, **timing})
        print(
            f"{tokens:>6} x {in_features:>5} -> {out_features:>5}{' +bias' if has_bias else '      '}  x{count:<3} "
            f"cuBLAS {timing['cublas_ms'] * 1e3:7.1f} us ({timing['gflop'] / timing['cublas_ms']:5.0f} TFLOP/s)  "
            f"Triton {timing['triton_ms'] * 1e3:7.1f} us ({timing['cublas_ms'] / timing['triton_ms']:.0%} of cuBLAS)",
            flush=True,
        )
    budget_ms = args.batch * args.seconds / args.target * 1e3
    print(
        f"\nall {sum(calls.values())} projections of one encode + decode of {args.batch} x {args.seconds:g} s: "
        f"{totals['gflop'] / 1e3:.2f} TFLOP; cuBLAS {totals['cublas_ms']:.2f} ms, "
        f"Triton {totals['triton_ms']:.2f} ms; "
        f"{args.target:,.0f}x allows {budget_ms:.2f} ms per call for everything"
    )
    if args.json:
        result = {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "batch": args.batch,
            "seconds": args.seconds,
            "budget_ms": budget_ms,
            "totals": totals,
            "shapes": rows,
        }
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
