#!/usr/bin/env python
"""The host time that torchao's quantized weights add to every call of our compiled encode + decode, with and
without inductor's freezing (`transformers_stable_codec.quantization.frozen_compile`), timed as interleaved calls
in one process. Every precision runs twice, compiled as the benchmarks compile it (`StableCodecContender`: encode
and decode compiled apart) in the plain mode and in the same mode with freezing: `default` / `freezing` on the
CPU, `reduce-overhead` / `reduce-overhead+freezing` (CUDA graphs) on a GPU.

Per call it records the wall time (synchronized), the host time (until the call returns, without synchronizing:
under CUDA graphs the GPU runs behind it), and the time spent inside inductor's compiled graphs
(`CompiledFxGraph.__call__`: on the CPU the kernels, under CUDA graphs the replay). Host time minus graph time is
what runs around the graphs: dynamo's guards and AOTAutograd's wrappers, where the quantized weights' cost is.
Medians over the rounds; per quantized layer, the difference to bf16 in the same mode. Each frozen variant's codes
are compared with its plain twin's (the convolutions' weight norms are folded first in every variant, as freezing
folds them, so that both compute the same).

fp8 on the CPU is a stand-in for the host side only: torchao's (and our) hardware check is bypassed to build it,
and its matmuls run emulated and slowly, so only its time around the graphs means anything.

    PYTHONPATH=src python benchmarks/quantized_call_overhead.py \\
        --json benchmarks/results/quantized_call_overhead_cpu.json
    python3 benchmarks/quantized_call_overhead.py --device cuda --config paper --scenario 1x10s --warmup 3 \\
        --attention flex_attention --precisions fp8 bf16 --json $OUT/overhead.json   # on the GPU machine
"""

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock


REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch
from torch._inductor.output_code import CompiledFxGraph

from benchmarks.benchmark_codecs import (
    load_config,
    machine_info,
    parse_scenario,
    scenario_name,
    synchronize,
    versions,
    where_label,
)
from benchmarks.contenders import StableCodecContender
from tests.model_helpers import fold_weight_norms, speechlike_audio, tiny_config
from transformers_stable_codec import StableCodecModel
from transformers_stable_codec.quantization import quantizable, quantize_model, quantized_layer_names, torchao_config


# Plain and frozen compile mode per device.
MODES = {"cpu": ("default", "freezing"), "cuda": ("reduce-overhead", "reduce-overhead+freezing")}
# The tiny model's widths with the paper-scale model's 224 quantized projections (28 transformer layers a side).
DEEP_TINY_DEPTHS = [14, 14]


class GraphTimer:
    """Adds up the time spent inside inductor's compiled graphs while it is installed."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self):
        run = CompiledFxGraph.__call__
        timer = self

        def timed(graph, *args, **kwargs):
            started = time.perf_counter()
            try:
                return run(graph, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - started

        with mock.patch.object(CompiledFxGraph, "__call__", timed):
            yield


def quantized_copy(base: StableCodecModel, precision: str) -> tuple[StableCodecModel, int]:
    model = copy.deepcopy(base).to(torch.bfloat16)
    if precision == "bf16":
        return model, 0
    if precision == "fp8" and next(model.parameters()).device.type == "cpu":
        # The CPU stand-in (see the module's docstring): torchao refuses fp8 without a GPU that has the kernels.
        from torchao.quantization import quantize_

        with mock.patch("torchao.quantization.quant_api._check_hardware_support", lambda granularity: None):
            quantize_(model, torchao_config("fp8"), filter_fn=quantizable)
        return model, len(quantized_layer_names(model))
    return model, len(quantize_model(model, precision))


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--config", default="deep-tiny", help="deep-tiny (default: 224 quantized layers) | paper")
    parser.add_argument("--scenario", type=scenario_name, default="1x0.5s")
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "flex_attention"])
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "int8", "fp8"], default=["bf16", "int8", "fp8"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant (compiling included)")
    parser.add_argument("--time-budget-s", type=float, help="build no further variant after this")
    parser.add_argument("--commit", help="git commit to record where the tree has no .git (the device copy)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be >= 1")
    device = torch.device(args.device)
    started = time.monotonic()

    torch.manual_seed(0)
    config = (
        tiny_config(transformer_depths=DEEP_TINY_DEPTHS) if args.config == "deep-tiny" else load_config(args.config)
    )
    with torch.device(device):
        base = StableCodecModel(config).eval().requires_grad_(False)
    base.set_attn_implementation(args.attention)
    fold_weight_norms(base)
    batch, seconds = parse_scenario(args.scenario)
    hop = config.hop_length
    samples = round(seconds * config.sampling_rate / hop) * hop
    audio = speechlike_audio(batch, samples, config.sampling_rate, device).to(torch.bfloat16)

    timer = GraphTimer()
    variants, calls, codes = {}, {}, {}
    results = {
        "benchmark": "quantized_call_overhead",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "where": where_label(device),
        "machine": machine_info(device),
        "versions": versions(args.commit),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": [
            "fp8 on CPU: a host-side stand-in, torchao's hardware check bypassed; its matmuls are emulated",
            "interleaved rounds, one encode + decode call of every variant per round in rotating order; medians",
            "around graphs = host time minus time inside inductor's compiled graphs: dynamo guards, AOTAutograd "
            "wrappers, Python around them; per quantized layer: the difference to bf16 in the same compile mode",
            "weight norms folded beforehand in every variant, so a frozen variant computes what its plain twin does",
        ][0 if args.device == "cpu" and "fp8" in args.precisions else 1 :],
        "variants": variants,
    }
    save(args.json, results)  # again after every build: a run stopped during the next compile keeps what was built
    for precision in args.precisions:
        for mode in MODES[args.device]:
            name = f"{precision}:{mode}"
            entry = variants[name] = {"precision": precision, "compile": mode}
            if args.time_budget_s is not None and time.monotonic() - started > args.time_budget_s:
                entry["status"] = "not run: time budget"
                continue
            build_started = time.monotonic()
            model, entry["quantized_layers"] = quantized_copy(base, precision)
            contender = StableCodecContender(model)
            contender.configure(args.attention, mode)

            def call(contender=contender):
                return contender.decode(contender.encode(audio))

            with torch.inference_mode():
                for _ in range(args.warmup):
                    call()
                codes[name] = contender.encode(audio)
            synchronize(device)
            entry.update(status="ok", build_and_warmup_s=time.monotonic() - build_started, wall_s=[], host_s=[])
            entry["graph_s"] = []
            calls[name] = call
            print(f"{name}: built and warmed up in {entry['build_and_warmup_s']:.1f} s", flush=True)
            save(args.json, results)

    with torch.inference_mode(), timer.installed():
        for round_index in range(args.rounds):
            names = list(calls)
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                synchronize(device)
                timer.seconds = 0.0
                call_started = time.perf_counter()
                output = calls[name]()
                returned = time.perf_counter()
                synchronize(device)
                finished = time.perf_counter()
                del output
                variants[name]["wall_s"].append(finished - call_started)
                variants[name]["host_s"].append(returned - call_started)
                variants[name]["graph_s"].append(timer.seconds)

    for name, entry in variants.items():
        if entry["status"] != "ok":
            continue
        around = [host - graph for host, graph in zip(entry["host_s"], entry["graph_s"])]
        entry.update(
            wall_ms=median_ms(entry["wall_s"]),
            host_ms=median_ms(entry["host_s"]),
            graph_ms=median_ms(entry["graph_s"]),
            around_graphs_ms=median_ms(around),
            around_graphs_ms_quartiles=[q * 1e3 for q in statistics.quantiles(around, n=4)] if len(around) > 1 else [],
        )
        plain = f"{entry['precision']}:{MODES[args.device][0]}"
        if name != plain and plain in codes:
            entry["codes_equal_to_plain"] = bool(torch.equal(codes[name], codes[plain]))
    for name, entry in variants.items():
        reference = variants.get(f"bf16:{entry['compile']}", {})
        if entry.get("quantized_layers") and "around_graphs_ms" in entry and "around_graphs_ms" in reference:
            extra = entry["around_graphs_ms"] - reference["around_graphs_ms"]
            entry["extra_around_graphs_us_per_layer"] = 1e3 * extra / entry["quantized_layers"]

    rows = [
        "| variant | quantized layers | wall ms | host ms | in graphs ms | around graphs ms (quartiles) | "
        "vs bf16, per quantized layer | codes = plain twin's |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in variants.items():
        if entry["status"] != "ok":
            rows.append(f"| {name} | | | | | | | {entry['status']} |")
            continue
        quartiles = entry["around_graphs_ms_quartiles"]
        spread = f" ({quartiles[0]:.2f}-{quartiles[2]:.2f})" if quartiles else ""
        per_layer = entry.get("extra_around_graphs_us_per_layer")
        equal = entry.get("codes_equal_to_plain")
        rows.append(
            f"| {name} | {entry['quantized_layers']} | {entry['wall_ms']:.2f} | {entry['host_ms']:.2f} | "
            f"{entry['graph_ms']:.2f} | {entry['around_graphs_ms']:.2f}{spread} | "
            f"{'' if per_layer is None else f'{per_layer:+.1f} us'} | {'' if equal is None else equal} |"
        )
    print("\n".join(rows))
    results.update(table=rows, wall_s=time.monotonic() - started)
    save(args.json, results)
    return results


def save(path: Path | None, results: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
