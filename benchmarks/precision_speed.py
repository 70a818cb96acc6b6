#!/usr/bin/env python
"""Our encode + decode in several precisions, timed as interleaved calls in one process: round after round, one call
of every variant (the order rotating), so that a noisy or drifting machine slows all of them alike. Each variant is
`PRECISION[:COMPILE]` (fp32, bf16, fp16, int8, fp8; a compile mode of benchmark_codecs.py, default none) on its own
copy of the same seeded weights; the first variant is the baseline, and for every other one the ratio
baseline time / variant time is taken per round (its median, quartiles and range are reported: > 1 is faster).

int8 and fp8 quantize the transformer projections with torchao (transformers_stable_codec.quantization) and
compute in bf16 around them. A variant that fails to build, compile or run is recorded with its error, and the
others go on. The JSON (`--json`) is rewritten after every stage.

CPU (2 cores), paper scale:
    PYTHONPATH=src python benchmarks/precision_speed.py --device cpu --variants bf16:freezing int8:freezing \\
        --scenarios 1x10s --rounds 7 --json benchmarks/results/precision_speed_cpu.json
GPU (the H200 command is in docs/precision.md):
    python3 benchmarks/precision_speed.py --device cuda --attention flex_attention \\
        --variants bf16:reduce-overhead fp8:reduce-overhead --scenarios 16x10s 1x10s --json $OUT/speed.json
"""

import argparse
import copy
import math
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch

from benchmarks import report
from benchmarks.benchmark_codecs import (
    DTYPES,
    QUANTIZED,
    configure_precision,
    describe_failure,
    free_memory,
    load_config,
    machine_info,
    parse_scenario,
    scenario_name,
    timed_call,
    versions,
    where_label,
)
from benchmarks.contenders import StableCodecContender
from tests.model_helpers import speechlike_audio
from transformers_stable_codec import StableCodecModel
from transformers_stable_codec.quantization import compile_int8_static, quantize_model


# Static int8 (compile_int8_static): compiled with inductor's freezing by construction, fed float32 audio (one
# codec per input shape; precision_quality.py shares the name).
STATIC_INT8 = "int8-static"


ROUNDS_PAST_THE_BUDGET = 5


def parse_variant(text: str) -> tuple[str, str]:
    precision, _, compile_mode = text.partition(":")
    if precision == STATIC_INT8 and compile_mode in ("", "freezing"):
        return precision, "freezing"
    compile_mode = compile_mode or "none"
    if precision not in DTYPES or compile_mode not in report.COMPILE_ORDER:
        raise argparse.ArgumentTypeError(
            f"a variant is PRECISION[:COMPILE] with PRECISION in {list(DTYPES)} and COMPILE in "
            f"{report.COMPILE_ORDER}, or {STATIC_INT8}[:freezing]; got {text!r}"
        )
    return precision, compile_mode


def input_dtype(precision: str) -> torch.dtype:
    return torch.float32 if precision == STATIC_INT8 else DTYPES[precision]


def variant_name(variant: tuple[str, str]) -> str:
    return f"{variant[0]}:{variant[1]}"


class StaticInt8Contender:
    """`compile_int8_static`'s codec for the audio's shape, calibrated on other speech-like audio of that shape."""

    def __init__(self, base: StableCodecModel, audio: torch.Tensor, seed: int):
        batch, _, samples = audio.shape
        calibration = speechlike_audio(batch, samples, base.config.sampling_rate, audio.device, seed + 1)
        self.codec = compile_int8_static(base, calibration)

    def encode(self, audio):
        return self.codec.encode(audio).audio_codes

    def decode(self, codes):
        return self.codec.decode(codes).audio_values


def build_variant(base: StableCodecModel, precision: str, compile_mode: str, attention: str, audio, seed: int):
    """A copy of `base` in `precision`, configured like benchmark_codecs.py's ours (int8-static: compiled for the
    shape of `audio`); (contender, quantized layer count)."""
    if precision == STATIC_INT8:
        contender = StaticInt8Contender(base, audio, seed)
        return contender, len(contender.codec.quantized_layers)
    model = copy.deepcopy(base).to(DTYPES[precision])
    quantized = quantize_model(model, precision) if precision in QUANTIZED else []
    contender = StableCodecContender(model)
    contender.configure(attention, compile_mode)
    return contender, len(quantized)


def spread(values: list[float]) -> dict:
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "median": statistics.median(ordered),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


class Interleaved:
    def __init__(self, args, results: dict, deadline: float):
        self.args, self.results, self.deadline = args, results, deadline
        self.device = torch.device(args.device)
        self.build_seconds: dict = {}  # variant -> seconds to build and warm up, in the last scenario

    def save(self):
        if self.args.json:
            report.save_results(self.args.json, self.results)

    def fail(self, entry: dict, stage: str, error: BaseException):
        status, reason = describe_failure(error, self.device)
        entry.update(status=status, reason=f"{stage}: {reason}", traceback=traceback.format_exc(limit=-6)[-3000:])
        print(f"  {entry['variant']} failed at {stage}: {reason}", flush=True)

    def scenario(self, base: StableCodecModel, name: str, recorded: list) -> None:
        """Measures one scenario into a new entry of `recorded` (saved as it fills)."""
        batch, seconds = parse_scenario(name)
        hop = base.config.hop_length
        samples = math.ceil(seconds * base.config.sampling_rate / hop) * hop
        audio = speechlike_audio(batch, samples, base.config.sampling_rate, self.device, self.args.seed)
        audio_seconds = batch * samples / base.config.sampling_rate
        entries, live = {}, {}
        recorded.append(
            {
                "scenario": name,
                "batch": batch,
                "clip_seconds": seconds,
                "audio_seconds": audio_seconds,
                "workload": "encode+decode",
                "baseline": variant_name(self.args.variants[0]),
                "variants": entries,
            }
        )
        # Building and compiling dominate a GPU run; a scenario whose variants would not all be ready within the
        # budget (at the previous scenario's pace) is left out whole rather than half measured.
        predicted = sum(self.build_seconds.values())
        for precision, compile_mode in self.args.variants:
            name_v = variant_name((precision, compile_mode))
            entry = entries[name_v] = {"variant": name_v, "precision": precision, "compile": compile_mode}
            if time.monotonic() + predicted > self.deadline:
                entry.update(status="not run", reason="time budget: it would not be built and timed in time")
                continue
            predicted = 0.0
            stage = "build"
            started = time.monotonic()
            try:
                contender, entry["quantized_layer_count"] = build_variant(
                    base, precision, compile_mode, self.args.attention, audio, self.args.seed
                )
                inputs = audio.to(input_dtype(precision))
                stage = "warm-up"

                def call(contender=contender, inputs=inputs):
                    return contender.decode(contender.encode(inputs))

                with torch.inference_mode():
                    entry["warmup_s"] = [timed_call(call, self.device) for _ in range(self.args.warmup)]
            except Exception as error:  # noqa: BLE001  (a failure is a result, the other variants go on)
                self.fail(entry, stage, error)
                free_memory(self.device)
                continue
            entry.update(status="ok", times_s=[], build_and_warmup_s=time.monotonic() - started)
            self.build_seconds[name_v] = entry["build_and_warmup_s"]
            self.save()
            live[name_v] = call
            print(f"  {name_v}: warm-up {', '.join(f'{s:.2f}' for s in entry['warmup_s'])} s", flush=True)
        self.save()
        for round_index in range(self.args.rounds):
            # Past the budget, still the first few rounds: next to the compiles they cost little, and they are the
            # result (on 2026-12-02 the budget ran out during the compiles and none ran).
            if not live or (round_index >= ROUNDS_PAST_THE_BUDGET and time.monotonic() > self.deadline):
                break
            names = list(live)
            shift = round_index % len(names)
            for name_v in names[shift:] + names[:shift]:
                if name_v not in live:
                    continue
                try:
                    with torch.inference_mode():
                        entries[name_v]["times_s"].append(timed_call(live[name_v], self.device))
                except Exception as error:  # noqa: BLE001
                    self.fail(entries[name_v], f"round {round_index}", error)
                    del live[name_v]
            print(
                f"  round {round_index}: "
                + ", ".join(f"{n} {entries[n]['times_s'][-1]:.3f} s" for n in live if entries[n]["times_s"]),
                flush=True,
            )
        del live
        free_memory(self.device)
        baseline = variant_name(self.args.variants[0])
        base_times = entries[baseline].get("times_s") or []
        for entry in entries.values():
            times = entry.get("times_s") or []
            if not times:
                continue
            entry["median_s"] = statistics.median(times)
            entry["throughput_x"] = audio_seconds / entry["median_s"]
            if entry["variant"] != baseline and base_times:
                pairs = list(zip(base_times, times))
                entry["speedup_vs_baseline_per_round"] = [b / t for b, t in pairs]
                entry["speedup_vs_baseline"] = spread(entry["speedup_vs_baseline_per_round"])


def summary_lines(results: dict) -> list[str]:
    lines = ["| scenario | variant | encode+decode | vs baseline: median (quartiles; range) over rounds | status |"]
    lines.append("|---|---|---|---|---|")
    for run in results["runs"].values():
        for scenario in run.get("scenarios", []):
            for entry in scenario["variants"].values():
                throughput = entry.get("throughput_x")
                ratio = entry.get("speedup_vs_baseline")
                ratio_text = (
                    f"{ratio['median']:.2f}x ({ratio['q1']:.2f}-{ratio['q3']:.2f}; {ratio['min']:.2f}-"
                    f"{ratio['max']:.2f}; n={ratio['n']})"
                    if ratio
                    else ("baseline" if entry["variant"] == scenario["baseline"] else "")
                )
                status = entry.get("status", "")
                if status != "ok":
                    status += f": {entry.get('reason', '')[:150]}"
                lines.append(
                    f"| {scenario['scenario']} | {entry['variant']} | "
                    f"{report.format_throughput(throughput) if throughput else '-'} | {ratio_text} | {status} |"
                )
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="paper", help="paper (default), tiny, or a config path")
    parser.add_argument("--variants", nargs="+", type=parse_variant, required=True, help="the first is the baseline")
    parser.add_argument("--attention", default="sdpa", choices=report.ATTENTION_ORDER)
    parser.add_argument("--scenarios", nargs="+", type=scenario_name, default=["1x10s"])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed calls of each variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant (compiling included)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--time-budget-s", type=float, default=None, help="stop building / timing after this")
    parser.add_argument("--commit", help="git commit to record where the tree has no .git (the device copy)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if len(args.variants) < 2 or args.rounds < 1 or args.warmup < 1:
        parser.error("needs two or more variants, --rounds >= 1 and --warmup >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.time_budget_s if args.time_budget_s is not None else math.inf
    device = torch.device(args.device)
    precision_settings = configure_precision()
    results = report.new_results()
    run_id = f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}-{args.device}-precision-speed"
    run = results["runs"][run_id] = {
        "where": where_label(device),
        "machine": machine_info(device),
        "versions": versions(args.commit),
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "variants": [variant_name(v) for v in args.variants],
            **precision_settings,
        },
        "notes": [
            "interleaved: each round times one encode + decode call of every variant, in rotating order; ratios are "
            "taken within a round, so machine drift and other processes' load cancel out to first order",
            "int8 / fp8: torchao's dynamic-activation quantization of the transformer projections, bf16 elsewhere",
            "int8-static: compile_int8_static (PT2E static int8 of the transformer projections through oneDNN, bf16 "
            "autocast elsewhere, inductor freezing), calibrated on speech-like audio of another seed",
        ],
        "scenarios": [],
    }
    try:
        import torchao

        run["versions"]["torchao"] = torchao.__version__
    except ImportError:
        run["notes"].append("torchao is not installed: the int8 / fp8 variants fail")
    torch.manual_seed(args.seed)
    with torch.device(device):
        base = StableCodecModel(load_config(args.config))
    base = base.eval().requires_grad_(False)
    base.set_attn_implementation(args.attention)
    benchmark = Interleaved(args, results, deadline)
    for scenario in args.scenarios:
        print(f"{scenario} on {run['where']}:", flush=True)
        benchmark.scenario(base, scenario, run["scenarios"])
        benchmark.save()
    run["wall_s"] = time.monotonic() - started
    benchmark.save()
    print("\n".join(summary_lines(results)))
    return results


if __name__ == "__main__":
    main()
