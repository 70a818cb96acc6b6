#!/usr/bin/env python
"""Where the time of one paper-scale 1 x 10 s encode + decode goes on this CPU, bf16 with inductor's freezing
against static int8 (`compile_int8_static`): torch.profiler over a few calls of each (after warm-up), self time
grouped into matmuls of the transformer projections (oneDNN's int8 `qlinear_pointwise`, bf16 `_linear_pointwise`),
attention (sdpa), convolutions, the rotary embedding's cos / sin, inductor's fused C++ kernels (norms, SwiGLU,
residuals, window masks, the activations' quantizing) and the rest. The int8 kernels can only speed up the first
group; the others bound the whole.

    PYTHONPATH=src python benchmarks/int8_static_profile.py --json benchmarks/results/int8_static_profile_cpu.json
"""

import argparse
import copy
import json
import sys
import time
from collections import defaultdict
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch
from torch._inductor import config as inductor_config

from benchmarks.benchmark_codecs import load_config, machine_info, versions, where_label
from benchmarks.contenders import StableCodecContender
from tests.model_helpers import speechlike_audio
from transformers_stable_codec import StableCodecModel
from transformers_stable_codec.quantization import compile_int8_static


# Profiler event names (substrings) per group, first match wins; anything else is "other". Inductor's kernels come
# first: their names list the ops fused into them, sdpa's among them where a kernel prepares its inputs.
GROUPS = {
    "inductor fused kernels": ("cpp_fused",),
    "int8 matmul (oneDNN qlinear)": ("qlinear_pointwise",),
    "bf16 matmul (oneDNN linear)": ("_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm"),
    "attention (sdpa)": ("scaled_dot_product", "flash_attention"),
    "convolutions": ("convolution", "mkldnn_convolution", "conv1d", "conv_transpose"),
    "rotary cos / sin": ("rotary_cos_sin", "aten::cos", "aten::sin"),
}


def group_of(name: str) -> str:
    for group, keys in GROUPS.items():
        if any(key in name for key in keys):
            return group
    return "other"


def profile(call, calls: int) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    started = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    wall = (time.perf_counter() - started) / calls
    groups, top = defaultdict(float), defaultdict(float)
    for event in prof.key_averages():
        groups[group_of(event.key)] += event.self_cpu_time_total / 1e6 / calls
        top[event.key] += event.self_cpu_time_total / 1e6 / calls
    total = sum(groups.values())
    return {
        "wall_s_per_call": wall,
        "profiled_self_s_per_call": total,
        "groups_s": dict(sorted(groups.items(), key=lambda item: -item[1])),
        "groups_share": {key: value / total for key, value in sorted(groups.items(), key=lambda item: -item[1])},
        "events_s": dict(sorted(top.items(), key=lambda item: -item[1])),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--calls", type=int, default=3, help="profiled calls of each variant")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    # Inductor's C++ kernels appear in the profile under their names only with this set before compiling.
    inductor_config.cpp.enable_kernel_profile = True
    torch.manual_seed(0)
    base = StableCodecModel(load_config(args.config)).eval().requires_grad_(False)
    base.set_attn_implementation("sdpa")
    hop = base.config.hop_length
    samples = round(args.seconds * base.config.sampling_rate / hop) * hop
    audio = speechlike_audio(1, samples, base.config.sampling_rate, device, 0)
    results = {"where": where_label(device), "machine": machine_info(device), "versions": versions(None)}
    results["settings"] = {"config": args.config, "seconds": args.seconds, "calls": args.calls}
    results["variants"] = {}
    bf16 = StableCodecContender(copy.deepcopy(base).to(torch.bfloat16))
    bf16.configure("sdpa", "freezing")
    static = compile_int8_static(base, speechlike_audio(1, samples, base.config.sampling_rate, device, 1))
    calls = {
        "bf16 frozen": lambda: bf16.decode(bf16.encode(audio.bfloat16())),
        "int8-static": lambda: static.decode(static.encode(audio).audio_codes),
    }
    with torch.inference_mode():
        for name, call in calls.items():
            for _ in range(2):
                call()
        for name, call in calls.items():
            results["variants"][name] = entry = profile(call, args.calls)
            print(f"{name}: {entry['wall_s_per_call']:.2f} s per call", flush=True)
            for group, seconds in entry["groups_s"].items():
                print(f"  {group}: {seconds:.3f} s ({100 * entry['groups_share'][group]:.0f} %)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
