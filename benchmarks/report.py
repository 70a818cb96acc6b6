"""The benchmark's results file (JSON) and its tables.

One file holds any number of runs (machine, versions, settings, matmul ceilings, FLOP counts) and every case they
measured, keyed by `where|codec|attention|compile|dtype|scenario|workload`: a later measurement of the same case
replaces the earlier one, so runs split across several commands merge into one file.
"""

import json
import os
import statistics
from pathlib import Path


FORMAT = "transformers-stable-codec-benchmark/1"
CONTENDER_ORDER = ["stable-codec", "original", "mimi", "dac", "xcodec2"]
DTYPE_ORDER = ["fp32", "bf16", "fp16", "int8", "fp8"]
ATTENTION_ORDER = ["eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_4"]
COMPILE_ORDER = ["none", "default", "freezing", "reduce-overhead", "reduce-overhead+freezing", "max-autotune"]
SCENARIO_ORDER = ["1x10s", "16x10s", "1x60s", "1x3600s"]
WORKLOAD_COLUMNS = [("encode", "encode"), ("decode", "decode"), ("both", "encode+decode")]
HEADERS = [
    "where",
    "codec",
    "dtype",
    "attention",
    "compile",
    "batch x clip",
    "encode",
    "decode",
    "encode+decode",
    "peak memory",
]


def new_results() -> dict:
    return {"format": FORMAT, "runs": {}, "cases": {}}


def load_results(path) -> dict:
    with open(path) as handle:
        results = json.load(handle)
    if results.get("format") != FORMAT:
        raise ValueError(f"{path} is not a results file of this benchmark (format {results.get('format')!r})")
    return results


def merge_results(*all_results: dict) -> dict:
    """Runs and cases of all files; for a case measured more than once, the last file's."""
    merged = new_results()
    for results in all_results:
        merged["runs"].update(results["runs"])
        merged["cases"].update(results["cases"])
    return merged


def save_results(path, results: dict) -> None:
    """Merges into what `path` already holds (other runs' cases stay) and writes atomically."""
    path = Path(path)
    if path.exists():
        results = merge_results(load_results(path), results)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        json.dump(results, handle, indent=1, sort_keys=False)
        handle.write("\n")
    os.replace(temporary, path)


def case_key(
    where: str, contender: str, attention: str, compile_mode: str, dtype: str, scenario: str, workload: str
) -> str:
    return "|".join([where, contender, attention, compile_mode, dtype, scenario, workload])


def format_throughput(value: float) -> str:
    return f"{value:,.0f}x" if value >= 100 else f"{value:.1f}x"


def format_fraction(value: float | None) -> str:
    if value is None:
        return ""
    return f" ({100 * value:.1f}%)" if value >= 0.001 else f" ({100 * value:.2f}%)"


def _order(sequence: list, value) -> tuple:
    return (sequence.index(value), "") if value in sequence else (len(sequence), str(value))


def table_rows(results: dict) -> tuple[list[list[str]], list[str]]:
    """Rows of the table (one per where / codec / dtype / attention / compile / scenario) and its footnotes."""
    groups: dict[tuple, dict] = {}
    where_order = []
    for case in results["cases"].values():
        if case["where"] not in where_order:
            where_order.append(case["where"])
        group = (case["where"], case["contender"], case["dtype"], case["attention"], case["compile"], case["scenario"])
        groups.setdefault(group, {})[case["workload"]] = case

    def sort_key(group):
        where, contender, dtype, attention, compile_mode, scenario = group
        return (
            where_order.index(where),
            _order(CONTENDER_ORDER, contender),
            _order(DTYPE_ORDER, dtype),
            _order(ATTENTION_ORDER, attention),
            _order(COMPILE_ORDER, compile_mode),
            _order(SCENARIO_ORDER, scenario),
        )

    footnotes: list[str] = []
    rows = []
    for group in sorted(groups, key=sort_key):
        cases = groups[group]
        first = next(iter(cases.values()))
        cells = []
        for workload, _ in WORKLOAD_COLUMNS:
            case = cases.get(workload)
            if case is None:
                cells.append("")
            elif case["status"] == "ok":
                cells.append(format_throughput(case["throughput_x"]) + format_fraction(case.get("ceiling_fraction")))
            else:
                reason = f"{case['status']}: {case['reason']}"
                if reason not in footnotes:
                    footnotes.append(reason)
                label = {"oom": "OOM", "not run": "not run"}.get(case["status"], case["status"])
                cells.append(f"{label} [{footnotes.index(reason) + 1}]")
        peaks = [case["peak_memory_gib"] for case in cases.values() if case.get("peak_memory_gib") is not None]
        kind = first.get("peak_memory_kind", "")
        peak = f"{max(peaks):.1f} GiB" + (" RSS" if "RSS" in kind else "") if peaks else "—"
        batch_clip = f"{first['batch']} x {_format_seconds(first['clip_seconds'])}"
        rows.append(
            [
                first["where"],
                first["label"],
                first["dtype"],
                first["attention"],
                first["compile"],
                batch_clip,
                *cells,
                peak,
            ]
        )
    return rows, footnotes


def _format_seconds(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def plain_table(results: dict) -> str:
    rows, footnotes = table_rows(results)
    widths = [max(len(str(row[index])) for row in [HEADERS] + rows) for index in range(len(HEADERS))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [HEADERS] + rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += [f"[{index}] {note}" for index, note in enumerate(footnotes, 1)]
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    rows, footnotes = table_rows(results)
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    if footnotes:
        lines.append("")
        lines += [f"[{index}] {note.replace('|', '/')}  " for index, note in enumerate(footnotes, 1)]
    return "\n".join(lines)


def flops_rows(results: dict) -> list[list[str]]:
    """GFLOP per audio-second of every codec and clip length counted (the last run's count where several ran)."""
    counted = {}
    for run in results["runs"].values():
        for contender, per_length in run.get("flops", {}).items():
            for samples, entry in per_length.items():
                counted[(contender, int(samples))] = (run["contenders"].get(contender, {}), entry)
    rows = []
    for (contender, samples), (about, entry) in sorted(
        counted.items(), key=lambda item: (_order(CONTENDER_ORDER, item[0][0]), item[0][1])
    ):
        label = about.get("label", contender)
        if "error" in entry:
            rows.append([label, "", f"not counted: {entry['error']}", "", ""])
            continue
        cells = [
            f"{entry[name]['per_audio_second'] / 1e9:.2f} ({100 * entry[name]['attention_share']:.1f}%)"
            for name in ("encode", "decode")
        ]
        parameters = about.get("parameters")
        rows.append(
            [label, _format_seconds(entry["clip_seconds"]), *cells, f"{parameters / 1e6:.0f}M" if parameters else ""]
        )
    return rows


FLOPS_HEADERS = [
    "codec",
    "clip",
    "encode GFLOP/audio-s (SDPA + bmm)",
    "decode GFLOP/audio-s (SDPA + bmm)",
    "parameters",
]


def flops_markdown(results: dict) -> str:
    lines = ["| " + " | ".join(FLOPS_HEADERS) + " |", "|" + "---|" * len(FLOPS_HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in flops_rows(results)]
    return "\n".join(lines)


def cores_label(machine: dict) -> str:
    """'2 CPU cores', or '2 of 16 CPU cores' for a run pinned with taskset, with AMX where the CPU has it."""
    cores, of = machine.get("cpu_cores"), machine.get("machine_cpu_cores")
    label = f"{cores} of {of} CPU cores" if of and of != cores else f"{cores} CPU cores"
    return label + (" (AMX-BF16)" if machine.get("cpu_has_amx_bf16") else "")


def runs_summary(results: dict) -> str:
    """What each run measured on: machine, versions, ceilings, and where it stopped early."""
    lines = []
    for run_id, run in results["runs"].items():
        machine, versions = run["machine"], run["versions"]
        gpu = ""
        if machine.get("gpu"):
            gpu = (
                f" ({machine['gpu']}, {machine.get('gpu_memory_gib')} GiB, {machine.get('multiprocessors')} SMs, "
                f"driver {machine.get('driver') or '?'}; CPU {machine.get('cpu_model')})"
            )
        lines.append(
            f"run {run_id}: {run['where']}{gpu}; {cores_label(machine)}, {machine.get('torch_threads')} "
            f"torch threads; torch {versions.get('torch')}, transformers {versions.get('transformers')}, CUDA "
            f"{versions.get('cuda') or '—'}, ours {versions.get('transformers_stable_codec')} at "
            f"{versions.get('git_commit')}"
        )
        load = [machine.get(f"load_average_at_{when}") for when in ("start", "end")]
        if all(load):
            lines.append(f"  load average (1 min) at start / end: {load[0][0]:.2f} / {load[1][0]:.2f}")
        ceilings = ", ".join(
            f"{dtype} {value['tflops']:.3g} TFLOP/s" for dtype, value in run.get("ceilings", {}).items()
        )
        if ceilings:
            lines.append(f"  matmul ceiling ({run['settings'].get('ceiling_size')}^3): {ceilings}")
        for note in run.get("notes", []):
            lines.append(f"  {note}")
        shares = [
            case["cpu_share_used_elsewhere"]
            for case in results["cases"].values()
            if case["run"] == run_id and case.get("cpu_share_used_elsewhere") is not None
        ]
        if shares and run["where"].startswith("CPU"):
            lines.append(
                "  CPU time other processes used during the timed calls: "
                f"median {100 * statistics.median(shares):.1f}%,"
                f" at most {100 * max(shares):.1f}%"
            )
        if run.get("stopped"):
            lines.append(f"  stopped early: {run['stopped']['reason']}; {len(run['stopped']['left'])} cases left")
    return "\n".join(lines)


LEGEND = (
    "cells: audio-seconds per second (x real time), median of the timed repeats after warm-up, and in "
    "parentheses the fraction of the device's matmul ceiling in that dtype reached (FLOPs per audio-second x "
    "throughput / ceiling); peak memory: CUDA max_memory_allocated over the timed repeats (weights included), "
    "or the process's peak RSS on CPU"
)
