#!/usr/bin/env python
"""Where the compiled encode + decode spends its GPU time: one 16 x 10 s batch of the paper-scale model in bf16
(`--precisions bf16 fp8`: also with torchao's fp8 projections), compiled with CUDA graphs (or `--mode default`
without), timed and then profiled kernel by kernel. Prints the time
per kernel category (cuBLAS matmuls, attention, inductor's Triton kernels), the GPU's idle gaps and the top
kernels, and writes JSON.

    python3 benchmarks/profile_kernels.py --json $OUT/profile.json            # on the GPU machine

`--functions joint` compiles encode + decode as one function; `apart` compiles them separately (the benchmark's
way). docs/benchmarks.md quotes its figures.
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from benchmarks.benchmark_codecs import load_config
from benchmarks.contenders import StableCodecContender
from transformers_stable_codec import StableCodecModel
from transformers_stable_codec.quantization import quantize_model


CATEGORIES = {
    # fp8 GEMMs first: cuBLAS names its fp8 kernels "nvjet_sm90_qqtst_...", CUTLASS's rowwise one "f8f8bf16_rowwise"
    "fp8 matmul": ("qqtst", "f8f8", "e4m3"),
    "matmul": ("gemm", "cutlass", "xmma", "nvjet", "cublas"),
    "attention": ("fmha", "flash", "attention", "cudnn"),
    "triton": ("triton",),
}
GAP_US = 50.0


def kernel_category(name: str) -> str:
    """cuBLAS / CUTLASS matmuls, attention kernels, inductor's Triton kernels, or other. Triton first: inductor names
    the kernel that lays out attention's inputs after the attention op, but it is elementwise work."""
    lowered = name.lower()
    if lowered.startswith("triton"):
        return "triton"
    for category, markers in CATEGORIES.items():
        if any(marker in lowered for marker in markers):
            return category
    return "other"


def kernel_summary(kernels: list[tuple[str, float, float]]) -> dict:
    """`(name, start_us, end_us)` of each kernel: busy time, span from first start to last end, the idle gaps longer
    than GAP_US (with the kernel that ends each), and busy time per category, all in milliseconds."""
    kernels = sorted(kernels, key=lambda kernel: kernel[1])
    by_category, gaps = {}, []
    busy_until = kernels[0][2]
    for name, start, end in kernels:
        by_category[kernel_category(name)] = by_category.get(kernel_category(name), 0.0) + (end - start) / 1e3
        if start - busy_until > GAP_US:
            gaps.append({"ms": (start - busy_until) / 1e3, "before": name})
        busy_until = max(busy_until, end)
    return {
        "kernels": len(kernels),
        "busy_ms": sum(end - start for _, start, end in kernels) / 1e3,
        "span_ms": (busy_until - kernels[0][1]) / 1e3,
        "gaps": gaps,
        "by_category_ms": by_category,
    }


def time_call(function, repeats: int = 7, warmup: int = 3) -> dict:
    """Median wall time (synchronize + perf_counter) and GPU time (CUDA events) of one call."""
    for _ in range(warmup):
        function()
    walls, gpus = [], []
    for _ in range(repeats):
        start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        start_event.record()
        function()
        end_event.record()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        gpus.append(start_event.elapsed_time(end_event) / 1e3)
    return {"wall_ms": statistics.median(walls) * 1e3, "gpu_ms": statistics.median(gpus) * 1e3}


def profile_call(function, top: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    function()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        function()
        torch.cuda.synchronize()
    kernels = [
        (event.name, event.time_range.start, event.time_range.end)
        for event in profiler.events()
        if event.device_type == torch.autograd.DeviceType.CUDA
    ]
    print(profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=70))
    return kernel_summary(kernels)


def compiled_codec(model, functions: str, audio: torch.Tensor, mode: str = "reduce-overhead"):
    """A call that encodes and decodes `audio`, compiled in `mode` (CUDA graphs by default). `apart` is the
    benchmark's own call (`StableCodecContender`: encode and decode compiled separately, each call a graph step of
    its own); `joint` compiles encode + decode as one function, one graph step per call."""
    if functions == "apart":
        contender = StableCodecContender(model)
        contender.configure(model.config._attn_implementation, mode)
        return lambda: contender.decode(contender.encode(audio))
    codec = torch.compile(
        lambda values: model.decode(model.encode(values).audio_codes).audio_values,
        mode=mode,
        fullgraph=True,
        dynamic=False,
    )

    def call():
        torch.compiler.cudagraph_mark_step_begin()
        return codec(audio)

    return call


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config`, `--batch`, `--seconds`: the model and batch that `bf16_model_and_batch` makes."""
    parser.add_argument("--config", default="paper", help="paper (default) | tiny | model_config.json | config.json")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)


def bf16_model_and_batch(args, device: str = "cuda") -> tuple[StableCodecModel, torch.Tensor]:
    """The model of `--config` in bf16 with seeded random weights, and a batch of noise (`--batch` x `--seconds`):
    kernel time does not depend on what the audio sounds like."""
    torch.manual_seed(0)
    model = StableCodecModel(load_config(args.config)).eval().to(device, torch.bfloat16)
    audio = 0.1 * torch.randn(args.batch, 1, round(args.seconds * model.config.sampling_rate), device=device)
    return model, audio


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--functions", nargs="+", choices=["joint", "apart"], default=["joint"])
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager", "flex_attention"])
    parser.add_argument(
        "--mode",
        default="reduce-overhead",
        choices=["reduce-overhead", "default"],
        help="torch.compile mode: with CUDA graphs (the benchmark's recipe) or without",
    )
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp8"], default=["bf16"])
    parser.add_argument("--top", type=int, default=18, help="kernels listed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("profiles CUDA kernels: run it on a GPU machine")

    model, audio = bf16_model_and_batch(args)
    model.set_attn_implementation(args.attention)
    audio_seconds = args.batch * audio.shape[-1] / model.config.sampling_rate
    results = {}
    for precision in args.precisions:
        variant = model
        if precision == "fp8":
            variant = copy.deepcopy(model)
            quantize_model(variant, "fp8")
        for functions in args.functions:
            name = functions if args.precisions == ["bf16"] else f"{precision} {functions}"
            torch._dynamo.reset()
            started = time.perf_counter()
            call = compiled_codec(variant, functions, audio, args.mode)
            with torch.no_grad():
                call()
                torch.cuda.synchronize()
                entry = {"compile_s": time.perf_counter() - started, **time_call(call)}
                entry["x_real_time"] = audio_seconds / (entry["wall_ms"] / 1e3)
                entry["profile"] = profile_call(call, args.top)
            results[name] = entry
            summary = {key: round(value, 2) for key, value in entry["profile"]["by_category_ms"].items()}
            print(
                f"{name}: {entry['x_real_time']:,.0f}x real time, {entry['wall_ms']:.2f} ms per call, "
                f"{entry['profile']['busy_ms']:.2f} ms of kernels ({summary}), "
                f"{len(entry['profile']['gaps'])} gaps over {GAP_US:.0f} us",
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "batch": args.batch,
                    "seconds": args.seconds,
                    "attention": args.attention,
                    "mode": args.mode,
                    "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(),
                    "results": results,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
