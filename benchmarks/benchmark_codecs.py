#!/usr/bin/env python
"""Throughput, peak memory and arithmetic efficiency of Stable Codec (this package) against the original
(stable-codec 0.1.2 on stable-audio-tools 0.0.17, in the same process on the same device) and transformers'
`MimiModel`, `DacModel` and `Xcodec2Model`.

For every codec, dtype, attention backend and compile mode (the last two for ours), and every scenario (batch x clip
length), it times encode, decode and encode+decode: median of `--repeats` calls after `--warmup` calls, each call
bracketed by device synchronizations. Throughput is audio-seconds per second ("x real time"); peak memory is
`torch.cuda.max_memory_allocated` over the timed calls, weights included (the process's peak RSS on CPU). The FLOPs
per audio-second of each codec are counted with `torch.utils.flop_counter.FlopCounterMode` over one encode and one
decode of one clip of the scenario's length, and the device's arithmetic ceiling is measured in the same run (a
large matmul per dtype), giving the fraction of the ceiling reached = FLOPs/audio-s x throughput / ceiling.
fp32 is honest fp32: TF32 is off for matmuls and cuDNN. Failures (CUDA OOM included) are recorded per case, and
the JSON is rewritten after every case, so a run cut short keeps what it measured.

The model: `--config paper` (default) is `benchmarks/paper_scale_model_config.json`, the paper-scale model (953M
parameters, random weights) in the original's layout, which builds both ours and the original; `--config tiny` a
small model for smoke runs (tiny peers too); or a path to a `model_config.json` (original layout) / `config.json`.

CPU (2 cores here):
    PYTHONPATH=src python benchmarks/benchmark_codecs.py --device cpu --json /tmp/cpu.json
    PYTHONPATH=src python benchmarks/benchmark_codecs.py --report benchmarks/results/cpu_2cores.json

GPU machine (Python 3.12, torch 2.11, transformers 5.17, no stable-audio-tools): carry the original's wheels, made
here by `benchmarks/prepare_wheels.sh` into `.whl-bench/` (and the project's `.whl/base`), and start every command with
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/base/*.whl .whl-bench/*.whl && export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1 &&
then, for example (each command under 10 minutes; --time-budget-s stops a sweep cleanly before it):
    python3 benchmarks/benchmark_codecs.py --commit SHA --scenarios 1x10s --dtypes fp32 --backends sdpa \
        --json $OUT/a.json --time-budget-s 480
benchmarks/README.md lists the full sweep, split into runs; merge their JSON files with --report a.json b.json.
"""

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "src", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch

from benchmarks import report
from benchmarks.contenders import CONTENDER_LABELS, build_contender
from tests.model_helpers import speechlike_audio, tiny_config
from transformers_stable_codec.quantization import quantize_model


CONTENDERS = list(CONTENDER_LABELS)
WORKLOADS = ["encode", "decode", "both"]
SCENARIOS = report.SCENARIO_ORDER  # any BATCHxSECONDSs works, e.g. 4x30s
# int8 and fp8: ours with its transformer projections quantized by torchao (transformers_stable_codec.quantization),
# computing in bf16 around them; their ceiling fraction refers to the bf16 matmul ceiling.
DTYPES = dict(zip(report.DTYPE_ORDER, (torch.float32, torch.bfloat16, torch.float16, torch.bfloat16, torch.bfloat16)))
QUANTIZED = ("int8", "fp8")
BACKENDS = report.ATTENTION_ORDER
COMPILE_MODES = report.COMPILE_ORDER
PAPER_CONFIG = Path(__file__).resolve().parent / "paper_scale_model_config.json"
DEVICE_DEFAULTS = {
    "cuda": dict(
        scenarios=SCENARIOS, dtypes=["fp32", "bf16"], backends=BACKENDS, repeats=5, warmup=2, ceiling_size=8192
    ),
    "cpu": dict(scenarios=["1x10s"], dtypes=["fp32"], backends=["sdpa"], repeats=3, warmup=2, ceiling_size=2048),
}
GIB = 2**30


# --- what to run --------------------------------------------------------------------------------------------------


def parse_scenario(name: str) -> tuple[int, float]:
    """'16x10s' -> (16, 10.0): a batch of 16 clips of 10 seconds."""
    match = re.fullmatch(r"(\d+)x(\d+(?:\.\d+)?)s", name)
    if match is None or int(match.group(1)) < 1 or float(match.group(2)) <= 0:
        raise argparse.ArgumentTypeError(f"a scenario is BATCHxSECONDSs, e.g. 1x10s or 16x10s; got {name!r}")
    return int(match.group(1)), float(match.group(2))


def scenario_name(name: str) -> str:
    parse_scenario(name)
    return name


@dataclass(frozen=True)
class Case:
    contender: str
    dtype: str
    backend: str  # ours: the attention backend; the others: "default" (their own attention)
    compile: str
    scenario: str
    workload: str


def plan_cases(args) -> list[Case]:
    """Every case, in the order that rebuilds and reconfigures models the least."""
    cases = []
    for contender in args.contenders:
        ours = contender == "stable-codec"
        for dtype in args.dtypes:
            for backend in args.backends if ours else ["default"]:
                for compile_mode in args.compile if ours else ["none"]:
                    for scenario in args.scenarios:
                        for workload in args.workloads:
                            cases.append(Case(contender, dtype, backend, compile_mode, scenario, workload))
    return cases


def load_config(name: str):
    """`paper`, `tiny`, or a path to an original `model_config.json` / our `config.json`."""
    from transformers_stable_codec import StableCodecConfig
    from transformers_stable_codec.original_checkpoint import read_original_config

    if name == "tiny":
        return tiny_config()
    path = PAPER_CONFIG if name == "paper" else Path(name)
    original = read_original_config(path)
    if original.get("model_type") == "autoencoder":
        return StableCodecConfig.from_original_config(original)
    return StableCodecConfig.from_dict(original)


# --- the machine ----------------------------------------------------------------------------------------------------


def configure_precision() -> dict:
    """Honest fp32: no TF32 in matmuls or cuDNN convolutions."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return {"cuda.matmul.allow_tf32": False, "cudnn.allow_tf32": False, "float32_matmul_precision": "highest"}


def cpuinfo_field(name: str) -> str | None:
    """The first CPU's `name` line of /proc/cpuinfo (Linux), or None."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags") or "").split())


def usable_cpus() -> int:
    """The CPUs this process may run on (`taskset` narrows them), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def where_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).removeprefix("NVIDIA ")
    return f"CPU, {usable_cpus()} cores ({cpu_model()})"


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu_model": cpu_model(),
        "cpu_cores": usable_cpus(),
        "machine_cpu_cores": os.cpu_count(),
        "cpu_has_amx_bf16": "amx_bf16" in cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            gpu_memory_gib=round(properties.total_memory / GIB, 1),
            multiprocessors=properties.multi_processor_count,
        )
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(device.index or 0)]
            info["driver"] = subprocess.run(
                query, capture_output=True, text=True, timeout=20, check=False
            ).stdout.strip()
    return info


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20, check=False
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode != 0:
        return "unknown (no git checkout; pass --commit)"
    return commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def versions(commit: str | None) -> dict:
    import transformers

    import transformers_stable_codec

    found = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformers_stable_codec": transformers_stable_codec.__version__,
        "git_commit": commit or git_commit(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    for package in ("stable-audio-tools", "stable-codec", "flash-attn", "numpy", "triton"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Frees what earlier cases left: the CUDA cache, or on CPU the heap that glibc keeps (so that the peak RSS of
    a case is not inflated by an earlier, larger model)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak resident set size (VmHWM) of this process


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    with contextlib.suppress(OSError, AttributeError):
        with open("/proc/self/status") as handle:
            match = re.search(r"VmHWM:\s+(\d+) kB", handle.read())
        return int(match.group(1)) * 1024 / GIB
    return None


def cpu_counters() -> tuple[int, int, int] | None:
    """(all CPU time, idle time, this process's CPU time) in clock ticks, from /proc; None where unreadable."""
    try:
        with open("/proc/stat") as handle:
            values = [int(value) for value in handle.readline().split()[1:9]]
        with open("/proc/self/stat") as handle:
            own = handle.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return sum(values), values[3] + values[4], int(own[11]) + int(own[12])


def share_used_elsewhere(before, after) -> float | None:
    """Fraction of the machine's CPU time that other processes used between two `cpu_counters` readings: what
    makes CPU timings of this process slow and noisy (2 cores shared with anything else)."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    total, idle, own = (late - early for late, early in zip(after, before))
    return max(0.0, (total - idle - own) / total)


def wait_for_quiet_cpu(limit: float, quiet_seconds: float = 5.0, timeout_s: float = 600.0) -> float:
    """Waits until other processes use less than `limit` of the CPU for `quiet_seconds` in a row (or `timeout_s`
    passes); returns the seconds waited."""
    start = time.monotonic()
    quiet_since = start
    while time.monotonic() - start < timeout_s:
        before = cpu_counters()
        time.sleep(1.0)
        share = share_used_elsewhere(before, cpu_counters())
        if share is None:
            break
        if share >= limit:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_seconds:
            break
    return time.monotonic() - start


def quietly(measure_once, device: torch.device, args) -> dict:
    """`measure_once()`; on CPU with --max-cpu-elsewhere, measured again (after waiting for quiet) while other
    processes took more than that share of the CPU during its timed part."""
    limit = args.max_cpu_elsewhere if device.type == "cpu" else None
    attempt, waited = 1, 0.0
    while True:
        result = measure_once()
        share = result["cpu_share_used_elsewhere"]
        if limit is None or share is None or share <= limit or attempt > args.quiet_retries:
            return {**result, "attempts": attempt, "waited_for_quiet_s": waited}
        print(
            f"  other processes used {100 * share:.0f}% of the CPU: waiting for quiet, then measuring again",
            flush=True,
        )
        waited += wait_for_quiet_cpu(limit)
        attempt += 1


def matmul_ceiling(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> dict:
    """TFLOP/s of a size^3 matmul on random data: the arithmetic ceiling the fractions refer to."""
    generator = torch.Generator(device=device).manual_seed(0)
    left = torch.randn(size, size, device=device, generator=generator).to(dtype)
    right = torch.randn(size, size, device=device, generator=generator).to(dtype)
    for _ in range(2):
        timed_call(lambda: left @ right, device)
    counters = cpu_counters()
    seconds = statistics.median(timed_call(lambda: left @ right, device) for _ in range(repeats))
    return {
        "tflops": 2 * size**3 / seconds / 1e12,
        "size": size,
        "median_s": seconds,
        "cpu_share_used_elsewhere": share_used_elsewhere(counters, cpu_counters()),
    }


# --- inputs, FLOPs, timing ------------------------------------------------------------------------------------------


def cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's counter knows the CUDA SDPA kernels but not the CPU one: the same two matmuls per head."""
    batch, heads, queries, head_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * head_dim + 2 * batch * heads * queries * keys * value_dim


def count_flops(function) -> dict:
    """FLOPs of one call, in total and by aten op."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa_flops
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        function()
    by_op = {str(op): int(count) for op, count in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


ATTENTION_OPS = ("scaled_dot_product", "bmm", "flex_attention")


def attention_share(by_op: dict) -> float:
    """Share of the FLOPs in SDPA kernels and batched matmuls: the attention of ours and of the original (its einsum
    path); other models may also run projections as batched matmuls."""
    total = sum(by_op.values())
    attention = sum(count for op, count in by_op.items() if any(name in op for name in ATTENTION_OPS))
    return attention / total if total else 0.0


def timed_call(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    output = function()
    synchronize(device)
    seconds = time.perf_counter() - start
    del output
    return seconds


class TimeBudgetExceeded(Exception):
    pass


def measure(function, device: torch.device, warmup: int, repeats: int, deadline: float | None) -> dict:
    """Warm-up calls, then `repeats` timed calls; the peak memory of the timed calls."""
    free_memory(device)
    reset_peak_memory(device)  # an OOM in the warm-up reports this case's peak, not an earlier one's
    warmup_times = [timed_call(function, device) for _ in range(warmup)]
    if deadline is not None:
        estimate = (warmup_times[-1] if warmup_times else 0.0) * repeats
        if time.monotonic() + estimate > deadline:
            raise TimeBudgetExceeded(
                f"{repeats} timed calls of ~{estimate / repeats:.1f} s would pass the time budget"
            )
    reset_peak_memory(device)
    counters = cpu_counters()
    times = [timed_call(function, device) for _ in range(repeats)]
    return {
        "warmup_s": warmup_times,
        "times_s": times,
        "median_s": statistics.median(times),
        "peak_memory_gib": peak_memory_gib(device),
        "cpu_share_used_elsewhere": share_used_elsewhere(counters, cpu_counters()),
    }


def describe_failure(error: BaseException, device: torch.device) -> tuple[str, str]:
    """(status, reason) of a failed case; CUDA and CPU allocation failures are 'oom'."""
    message = str(error).strip()
    first_line = message.splitlines()[0] if message else type(error).__name__
    out_of_memory = (
        isinstance(error, torch.OutOfMemoryError)
        or "out of memory" in message.lower()
        or "can't allocate memory" in message.lower()
    )
    if out_of_memory:
        tried = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", message)
        peak = peak_memory_gib(device)
        where = f"OOM at {peak:.1f} GiB" if peak is not None and device.type == "cuda" else "OOM"
        return "oom", where + (f" (tried to allocate {tried.group(1)} more)" if tried else f": {first_line[:200]}")
    return "error", f"{type(error).__name__}: {first_line[:300]}"


# --- the run --------------------------------------------------------------------------------------------------------


class BenchmarkRun:
    """Walks the planned cases in order, keeping the current model, its dtype and configuration, and the current
    scenario's inputs, and records every case (or its failure) into `results`."""

    def __init__(self, args, device: torch.device, results: dict, run_id: str, deadline: float | None):
        self.args, self.device, self.results, self.run_id, self.deadline = args, device, results, run_id, deadline
        self.run = results["runs"][run_id]
        self.where = where_label(device)
        self.config = load_config(args.config)
        self.contender = None
        self.state: dict = {}  # what the current contender is set up for
        self.failures: dict = {}  # setup failures shared by later cases: (stage key) -> (status, reason)
        self.scenario: dict | None = None
        self.rates: dict = {}  # seconds per audio-second of the last timed case of the same codec setup

    def rate_key(self, case: Case) -> tuple:
        return (case.contender, case.dtype, case.backend, case.compile, case.workload)

    def predicted_seconds(self, case: Case) -> float:
        """What the case should take at the pace of the last measured scenario of the same setup (0 if none)."""
        rate = self.rates.get(self.rate_key(case))
        if rate is None:
            return 0.0
        batch, seconds = parse_scenario(case.scenario)
        return rate * batch * seconds * (self.args.warmup + self.args.repeats + 2)

    # -- setting up --

    def contender_for(self, case: Case):
        if self.state.get("contender") != case.contender:
            self.release()
            self.state = {"contender": case.contender}
            self.contender = build_contender(
                case.contender, self.config, self.device, tiny=self.args.config == "tiny", seed=self.args.seed
            )
            self.run["contenders"][case.contender] = {
                "label": CONTENDER_LABELS[case.contender],
                "parameters": self.contender.num_parameters,
                "sampling_rate": self.contender.sampling_rate,
                "hop_length": self.contender.hop_length,
                "notes": self.contender.notes,
            }
        if self.state.get("dtype") != case.dtype:
            if self.state.get("dtype") in QUANTIZED:  # quantizing cannot be undone: start from fresh weights
                self.release()
                return self.contender_for(case)
            self.scenario = None
            self.state.pop("dtype", None)
            self.contender.to_dtype(DTYPES[case.dtype])
            if case.dtype in QUANTIZED:
                quantize_model(self.contender.model, case.dtype)
            self.state.update(dtype=case.dtype, configured=None)
        return self.contender

    def attention_label(self, case: Case) -> str:
        if case.contender == "stable-codec":
            return case.backend
        if self.state.get("contender") == case.contender and self.contender is not None:
            return self.contender.attention_options([])[0]
        return "default"

    def configure(self, case: Case):
        configured = (case.backend, case.compile)
        if self.state.get("configured") != configured:
            self.scenario = None
            if case.compile != "none" or self.state.get("compiled"):
                torch._dynamo.reset()
            self.contender.configure(self.attention_label(case), case.compile)
            self.state.update(configured=configured, compiled=case.compile != "none")

    def prepare_scenario(self, case: Case):
        key = (case.scenario, self.state.get("configured"))
        if self.scenario is not None and self.scenario["key"] == key:
            return self.scenario
        self.scenario = None
        free_memory(self.device)
        reset_peak_memory(self.device)
        contender = self.contender
        batch, seconds = parse_scenario(case.scenario)
        samples = math.ceil(seconds * contender.sampling_rate / contender.hop_length) * contender.hop_length
        with torch.inference_mode():
            audio = speechlike_audio(batch, samples, contender.sampling_rate, self.device, self.args.seed)
            inputs = contender.prepare(audio.to(DTYPES[case.dtype]))
            del audio
            flops = self.flops_per_audio_second(case, samples, inputs)
            codes = contender.encode_for_decoding(*inputs) if {"decode", "both"} & set(self.args.workloads) else None
        self.scenario = {
            "key": key,
            "batch": batch,
            "seconds": seconds,
            "samples": samples,
            "inputs": inputs,
            "codes": codes,
            "flops": flops,
        }
        return self.scenario

    def flops_per_audio_second(self, case: Case, samples: int, inputs: tuple) -> dict:
        """Counted once per codec and clip length, on a batch of one clip; None where counting failed."""
        counted = self.run["flops"].setdefault(case.contender, {})
        if str(samples) not in counted:
            counted[str(samples)] = self.count_codec_flops(case, samples, inputs)
        entry = counted[str(samples)]
        if "error" in entry:
            return {"encode": None, "decode": None, "both": None}
        encode, decode = entry["encode"]["per_audio_second"], entry["decode"]["per_audio_second"]
        return {"encode": encode, "decode": decode, "both": encode + decode}

    def count_codec_flops(self, case: Case, samples: int, inputs: tuple) -> dict:
        contender, single = self.contender, tuple(value[:1] for value in inputs)
        try:
            with contender.flop_counting():
                encoded = []
                encode = count_flops(lambda: encoded.append(contender.encode(*single)))
                decode = count_flops(lambda: contender.decode(encoded[0]))
        except Exception as error:  # noqa: BLE001  (every failure is a result, not a crash)
            status, reason = describe_failure(error, self.device)
            del error
            free_memory(self.device)
            return {"error": f"{status}: {reason}"}
        audio_seconds = samples / contender.sampling_rate
        entry = {"clip_seconds": audio_seconds, "dtype_counted": case.dtype, "note": contender.flop_note()}
        for name, counts in (("encode", encode), ("decode", decode)):
            entry[name] = {
                **counts,
                "per_audio_second": counts["total"] / audio_seconds,
                "attention_share": attention_share(counts["by_op"]),
            }
        return entry

    def release(self):
        self.scenario, self.contender, self.state = None, None, {}
        torch._dynamo.reset()
        free_memory(self.device)

    # -- measuring --

    def workload_function(self, case: Case, scenario: dict):
        contender, inputs, codes = self.contender, scenario["inputs"], scenario["codes"]
        if case.workload == "encode":
            return lambda: contender.encode(*inputs)
        if case.workload == "decode":
            return lambda: contender.decode(codes)
        return lambda: contender.decode(contender.encode(*inputs))

    def record(
        self, case: Case, status: str, reason: str = "", scenario: dict | None = None, timing: dict | None = None
    ) -> dict:
        contender = self.contender if self.state.get("contender") == case.contender else None
        batch, seconds = parse_scenario(case.scenario)
        attention = self.attention_label(case)
        entry = {
            "run": self.run_id,
            "where": self.where,
            "contender": case.contender,
            "label": CONTENDER_LABELS[case.contender],
            "attention": attention,
            "compile": case.compile,
            "dtype": case.dtype,
            "scenario": case.scenario,
            "batch": batch,
            "clip_seconds": seconds,
            "workload": case.workload,
            "status": status,
            "reason": reason,
        }
        if scenario is not None and contender is not None:
            audio_seconds = scenario["batch"] * scenario["samples"] / contender.sampling_rate
            entry.update(
                sampling_rate=contender.sampling_rate,
                samples_per_clip=scenario["samples"],
                audio_seconds=audio_seconds,
                flops_per_audio_second=scenario["flops"][case.workload],
            )
        if timing is not None:
            throughput = entry["audio_seconds"] / timing["median_s"]
            ceiling = self.run["ceilings"].get(case.dtype)
            fraction = None
            if ceiling and entry.get("flops_per_audio_second"):
                fraction = entry["flops_per_audio_second"] * throughput / (ceiling["tflops"] * 1e12)
            entry.update(
                timing,
                throughput_x=throughput,
                ceiling_tflops=ceiling and ceiling["tflops"],
                ceiling_fraction=fraction,
                peak_memory_kind="cuda max_memory_allocated"
                if self.device.type == "cuda"
                else "process peak RSS (VmHWM)",
            )
        key = report.case_key(
            self.where, case.contender, attention, case.compile, case.dtype, case.scenario, case.workload
        )
        self.results["cases"][key] = entry
        self.log(entry)
        return entry

    def log(self, entry: dict):
        elapsed = time.monotonic() - self.args.started
        what = (
            f"{entry['contender']} {entry['attention']} {entry['compile']} {entry['dtype']} {entry['scenario']} "
            f"{entry['workload']}"
        )
        if entry["status"] == "ok":
            peak = entry.get("peak_memory_gib")
            fraction = report.format_fraction(entry.get("ceiling_fraction"))
            outcome = f"{report.format_throughput(entry['throughput_x'])}{fraction}" + (
                f", {peak:.2f} GiB" if peak is not None else ""
            )
            elsewhere = entry.get("cpu_share_used_elsewhere")
            if self.device.type == "cpu" and elsewhere is not None and elsewhere > 0.05:
                outcome += f" (other processes used {100 * elsewhere:.0f}% of the CPU meanwhile)"
        else:
            outcome = f"{entry['status']}: {entry['reason']}"
        print(f"[{elapsed:7.1f} s] {what}: {outcome}", flush=True)

    def setup_failure_key(self, case: Case, stage: str) -> tuple:
        keys = {
            "build": (case.contender,),
            "dtype": (case.contender, case.dtype),
            "configure": (case.contender, case.dtype, case.backend, case.compile),
            "scenario": (case.contender, case.dtype, case.backend, case.compile, case.scenario),
        }
        return (stage, *keys[stage])

    def run_case(self, case: Case) -> None:
        for stage in ("build", "dtype", "configure", "scenario"):
            failure = self.failures.get(self.setup_failure_key(case, stage))
            if failure is not None:
                self.record(case, *failure)
                return
        if case.dtype in QUANTIZED and case.contender != "stable-codec":
            self.record(case, "skipped", f"{case.dtype}: only ours has a quantized path")
            return
        stage = "build"
        try:
            self.contender_for(case)
            stage = "dtype"
            reason = self.contender.skip_reason(
                self.attention_label(case), DTYPES[case.dtype], case.compile, self.device
            )
            if reason is not None:
                self.record(case, "skipped", reason)
                return
            stage = "configure"
            self.configure(case)
            predicted = self.predicted_seconds(case)
            if self.deadline is not None and time.monotonic() + predicted > self.deadline:
                raise TimeBudgetExceeded(f"~{predicted:.0f} s at the pace of the last scenario would pass the budget")
            stage = "scenario"
            scenario = self.prepare_scenario(case)
            stage = "measure"
            timing = self.measure_quietly(case, scenario)
        except TimeBudgetExceeded as error:
            self.record(case, "not run", f"time budget: {error}")
            return
        except Exception as error:  # noqa: BLE001  (every failure is a result, not a crash)
            status, reason = describe_failure(error, self.device)
            self.run["errors"].append(
                {"case": repr(case), "stage": stage, "traceback": traceback.format_exc(limit=-6)[-3000:]}
            )
            del error
        else:
            entry = self.record(case, "ok", scenario=scenario, timing=timing)
            self.rates[self.rate_key(case)] = timing["median_s"] / entry["audio_seconds"]
            return
        if stage == "measure":
            self.record(case, status, reason, scenario=self.scenario)
        else:
            self.forget(stage)
            reason = f"{stage}: {reason}"
            self.failures[self.setup_failure_key(case, stage)] = (status, reason)
            self.record(case, status, reason)
        free_memory(self.device)

    def measure_quietly(self, case: Case, scenario: dict) -> dict:
        def measure_once():
            with torch.inference_mode():
                return measure(
                    self.workload_function(case, scenario),
                    self.device,
                    self.args.warmup,
                    self.args.repeats,
                    self.deadline,
                )

        return quietly(measure_once, self.device, self.args)

    def forget(self, stage: str) -> None:
        """After a failed setup stage, what it may have left half done is set up again by the next case."""
        self.scenario = None
        if stage == "build":
            self.release()
        elif stage == "dtype":
            self.state.pop("dtype", None)
        elif stage == "configure":
            self.state.pop("configured", None)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults depend on --device: " + repr(DEVICE_DEFAULTS),
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=WORKLOADS)
    parser.add_argument(
        "--scenarios",
        nargs="+",
        type=scenario_name,
        metavar="BATCHxSECONDSs",
        help=f"batch x clip length, e.g. {' '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=list(DTYPES), help="fp16 too where wanted (the anchors' original)"
    )
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, help="attention backends of our model")
    parser.add_argument(
        "--compile",
        nargs="+",
        choices=COMPILE_MODES,
        default=["none"],
        help="torch.compile modes of our encode / decode (fullgraph); 'freezing' is the default mode with "
        "inductor's freezing (weights as constants, prepacked for oneDNN: the CPU recipe), "
        "'reduce-overhead+freezing' CUDA graphs with freezing (no per-call host cost for quantized weights)",
    )
    parser.add_argument(
        "--config",
        default="paper",
        help="paper (default) | tiny | path to a model_config.json (original layout) or config.json",
    )
    parser.add_argument("--repeats", type=int, help="timed calls per case (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed calls before them")
    parser.add_argument("--ceiling-size", type=int, help="n of the n^3 matmul that measures the ceiling")
    parser.add_argument("--json", type=Path, help="results file; merged into if it exists, rewritten after every case")
    parser.add_argument(
        "--report",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the combined table of these results files, and its markdown",
    )
    parser.add_argument(
        "--time-budget-s", type=float, help="stop starting cases that would end after this many seconds"
    )
    parser.add_argument(
        "--max-cpu-elsewhere",
        type=float,
        metavar="SHARE",
        help="CPU only: measure a case again, after waiting for quiet, while other processes took more "
        "than this share of the machine's CPU during its timed calls (e.g. 0.05)",
    )
    parser.add_argument("--quiet-retries", type=int, default=5, help="how often, at most (default 5)")
    parser.add_argument("--commit", help="git commit to record where the tree has no .git (the device copy)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.device == "cuda" and not torch.cuda.is_available() and not args.report:
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    return args


def print_report(results: dict, markdown: bool) -> None:
    print(report.runs_summary(results))
    print(report.LEGEND)
    print()
    print(report.plain_table(results))
    print()
    print(
        "FLOPs counted (FlopCounterMode, one clip; in parentheses the share of SDPA kernels and batched matmuls, "
        "which is the attention of ours and of the original):"
    )
    print(report.flops_markdown(results))
    if markdown:
        print()
        print(report.markdown_table(results))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.report:
        results = report.merge_results(*(report.load_results(path) for path in args.report))
        print_report(results, markdown=True)
        return results

    args.started = time.monotonic()
    deadline = args.started + args.time_budget_s if args.time_budget_s is not None else None
    device = torch.device(args.device)
    precision = configure_precision()
    run_id = f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}-{args.device}-{os.getpid()}"
    results = report.new_results()
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("report", "started")
    }
    run = results["runs"][run_id] = {
        "where": where_label(device),
        "machine": machine_info(device),
        "versions": versions(args.commit),
        "settings": {
            **settings,
            **precision,
            "grad_mode": "torch.inference_mode",
            "timing": "synchronize + perf_counter around each call; median of the timed calls",
            "inputs": "synthetic voiced speech at each codec's sampling rate, clips padded to whole frames",
        },
        "notes": ["fp32 is honest fp32: TF32 off for matmuls and cuDNN"],
        "ceilings": {},
        "contenders": {},
        "flops": {},
        "errors": [],
    }
    if "original" in args.contenders:
        run["notes"].append(
            "the original runs as it ships without flash-attn: full attention over the whole clip "
            "(torch SDPA on CUDA, its einsum path on CPU), the anchors' setting"
        )

    cases = plan_cases(args)
    print(f"{len(cases)} cases on {run['where']}; torch {torch.__version__}; {run['notes'][0]}", flush=True)
    for dtype in args.dtypes:
        run["ceilings"][dtype] = quietly(
            lambda: matmul_ceiling(device, DTYPES[dtype], args.ceiling_size), device, args
        )
        print(f"matmul ceiling {dtype}: {run['ceilings'][dtype]['tflops']:.3g} TFLOP/s", flush=True)

    benchmark = BenchmarkRun(args, device, results, run_id, deadline)
    for index, case in enumerate(cases):
        if deadline is not None and time.monotonic() > deadline:
            run["stopped"] = {
                "reason": f"time budget of {args.time_budget_s:g} s reached",
                "left": [repr(left) for left in cases[index:]],
            }
            print(f"time budget reached: {len(cases) - index} cases left unmeasured", flush=True)
            break
        benchmark.run_case(case)
        if args.json:
            report.save_results(args.json, results)
    benchmark.release()
    run["wall_s"] = time.monotonic() - args.started
    run["machine"]["load_average_at_end"] = os.getloadavg()
    if args.json:
        report.save_results(args.json, results)
    print()
    print_report(results, markdown=False)
    return results


if __name__ == "__main__":
    main()
