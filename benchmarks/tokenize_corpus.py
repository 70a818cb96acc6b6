"""End-to-end speed of the corpus tokenizer: a folder of FLAC files to Parquet shards, as `stable-codec tokenize`
runs it, on the paper-scale model (random weights). Writes the corpus (synthetic voiced speech, `--hours` of 10 s
clips at 16 kHz) and the model once, then runs the tokenizer once per `--runs` entry, and reports for each run the
real-time factor (whole run, and after the first window, which carries compilation), the per-process time split
(after the first window where the code records it) and the GPU's busy fraction (NVML's utilization, sampled by
nvidia-smi every 100 ms, over the part after the first window).

    python benchmarks/tokenize_corpus.py --work-dir /tmp/tokenize --hours 8 -- --dtype bfloat16 --compile

`--runs` entries are CODE:BATCH_SECONDS, CODE `branch` (this checkout), `branch-autotuned` (this checkout with
inductor's kernel choice by timing, TORCHINDUCTOR_DETERMINISTIC=0) or `baseline` (the package under `--baseline-src`,
e.g. an earlier commit's src/, for an A/B of two versions of the pipeline in one run). Everything
after `--` goes to `stable-codec tokenize`. The JSON (`--json`) is rewritten after every run, and a markdown table
is printed at the end.
"""

import argparse
import json
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import soundfile
import torch


REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.model_helpers import speechlike_audio  # noqa: E402
from transformers_stable_codec import StableCodecConfig, StableCodecModel  # noqa: E402


CLIP_SECONDS, RATE = 10, 16000


def write_clips(arguments) -> None:
    folder, first, count = arguments
    torch.set_num_threads(1)  # one process per core
    audio = speechlike_audio(count, CLIP_SECONDS * RATE, RATE, torch.device("cpu"), seed=first)
    for offset in range(count):
        index = first + offset
        path = folder / f"{index // 1000:03d}" / f"clip-{index:06d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, audio[offset, 0].numpy(), RATE, subtype="PCM_16")


def make_corpus(folder: pathlib.Path, hours: float) -> int:
    clips = int(hours * 3600 / CLIP_SECONDS)
    if len(list(folder.rglob("*.flac"))) == clips:
        return clips
    jobs = [(folder, first, min(100, clips - first)) for first in range(0, clips, 100)]
    with multiprocessing.Pool() as pool:
        pool.map(write_clips, jobs)
    return clips


class GpuSampler:
    """nvidia-smi's GPU utilization (percent of each ~100 ms in which a kernel ran), with the wall-clock time each
    sample arrived; no samples where nvidia-smi is missing."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except FileNotFoundError:
            self.process = None
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.samples.append((time.time(), float(line.split(",")[0])))  # the first GPU
            except ValueError:
                pass

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()

    def mean(self, start: float, end: float) -> float | None:
        values = [value for when, value in self.samples if start <= when <= end]
        return sum(values) / len(values) / 100 if values else None


def steady_split(process: dict) -> dict | None:
    """Per-stage seconds after the first window (the code records its counters at the first window), with the
    model's device-busy fraction; None for code that does not record them (the baseline)."""
    first = process.get("first_window") or {}
    if "seconds" not in first:
        return None
    wall = process["wall_seconds"] - first["wall_seconds"]
    seconds = {name: value - first["seconds"][name] for name, value in process["seconds"].items()}
    device = {name: value - first["device_seconds"][name] for name, value in (process["device_seconds"] or {}).items()}
    return {
        "wall_seconds": wall,
        "seconds": seconds,
        "device_seconds": device,
        "model_busy_fraction": device["model"] / wall if wall > 0 and device else None,
    }


def codes_by_id(output_dir: pathlib.Path) -> dict:
    import pyarrow.parquet as pq

    codes = {}
    for shard in sorted(output_dir.glob("train-*.parquet")):
        table = pq.read_table(shard, columns=["id", "audio_codes"]).to_pydict()
        codes.update(zip(table["id"], table["audio_codes"]))
    return codes


def agreement(runs: list[dict]) -> None:
    """Each run's share of clips whose codes equal those of the first run with its batch size (same shapes, so the
    same kernels): a race in a pipeline would show as differences, and the baseline's second run as a reference."""
    first = {}
    for run in runs:
        if "output_dir" not in run:
            continue
        codes = codes_by_id(pathlib.Path(run["output_dir"]))
        reference = first.setdefault(run["batch_seconds"], (run["code"], codes))
        same = tokens = equal = 0
        for clip_id, value in reference[1].items():
            expected, actual = np.array(value), np.array(codes.get(clip_id, []))
            tokens += expected.size
            if actual.shape == expected.shape:
                matching = int((expected == actual).sum())
                equal, same = equal + matching, same + (matching == expected.size)
        run["same_codes_as_first_run"] = {
            "first_run": reference[0],
            "clips": len(reference[1]),
            "same": same,
            "token_agreement": equal / tokens if tokens else None,
        }


def run_once(args, code: str, batch_seconds: str, options: list[str], model_dir, timeout: float) -> dict:
    source = REPO / "src" if code.startswith("branch") else args.baseline_src.resolve()
    # branch-autotuned: inductor picks kernels by timing them (the tokenizer's default is its deterministic mode).
    environment = {**os.environ, **({"TORCHINDUCTOR_DETERMINISTIC": "0"} if code == "branch-autotuned" else {})}
    output_dir = args.work_dir / f"tokens-{code}-{batch_seconds}-{time.strftime('%H%M%S')}"
    command = [
        sys.executable,
        "-m",
        "transformers_stable_codec.cli",
        "tokenize",
        str(args.work_dir / "corpus"),
        "--output-dir",
        str(output_dir),
        "--model",
        str(model_dir),
        *options,
        "--batch-seconds",
        batch_seconds,
    ]
    path = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))
    sampler = GpuSampler()
    started_at, started = time.time(), time.perf_counter()
    # Its own process group: on timeout the DataLoader workers go too, which would otherwise hold the caller's pipes.
    process = subprocess.Popen(command, env={**environment, "PYTHONPATH": path}, start_new_session=True)
    try:
        exit_code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        exit_code = "timeout"
    wall = time.perf_counter() - started
    sampler.stop()
    summary = {"code": code, "source": str(source), "batch_seconds": float(batch_seconds), "command": command[2:]}
    summary["exit_code"] = exit_code
    if not (output_dir / "manifest.json").exists():
        return summary
    manifest = json.loads((output_dir / "manifest.json").read_text())
    process = manifest["processes"][0]
    # The stats file is written right after the last window: the steady part is the stretch before it.
    loop_end = (output_dir / "stats" / "rank-00000.json").stat().st_mtime
    first_wall = (process.get("first_window") or {}).get("wall_seconds", 0.0)
    loop_start = loop_end - process["wall_seconds"]
    summary.update(
        output_dir=str(output_dir),
        clips=manifest["clips"],
        audio_hours=manifest["audio_hours"],
        wall_seconds_with_startup=wall,
        realtime_factor_with_startup=manifest["audio_hours"] * 3600 / wall,
        realtime_factor=process["realtime_factor"],
        realtime_factor_after_first_window=process["realtime_factor_after_first_window"],
        gpu_utilization_after_first_window=sampler.mean(loop_start + first_wall, loop_end),
        gpu_utilization_whole_run=sampler.mean(started_at, loop_end),
        steady=steady_split(process),
        process=process,
    )
    return summary


def markdown(runs: list[dict]) -> str:
    lines = [
        "| code | batch | whole run | after the first window | GPU busy (NVML) | model busy (events) | time split "
        "| codes as the first run's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        if "realtime_factor" not in run:
            lines.append(f"| {run['code']} | {run['batch_seconds']:g} s | failed: exit {run['exit_code']} | | | | | |")
            continue
        steady = run["steady"]
        if steady:  # after the first window
            parts = {**steady["seconds"], **{f"device {k}": v for k, v in steady["device_seconds"].items()}}
            split = f"after the first window ({steady['wall_seconds']:.1f} s): "
        else:
            parts = run["process"]["seconds"]
            split = f"whole run ({run['process']['wall_seconds']:.1f} s): "
        split += ", ".join(f"{name.replace('_', ' ')} {value:.2f} s" for name, value in parts.items())
        utilization = run["gpu_utilization_after_first_window"]
        busy = steady and steady["model_busy_fraction"]
        same = run["same_codes_as_first_run"]
        agreeing = f"{same['same']}/{same['clips']} ({same['first_run']}); tokens {same['token_agreement']:.4%}"
        lines.append(
            f"| {run['code']} | {run['batch_seconds']:g} s | {run['realtime_factor']:,.0f}x "
            f"| **{run['realtime_factor_after_first_window'] or 0:,.0f}x** "
            f"| {'n/a' if utilization is None else f'{utilization:.0%}'} | {f'{busy:.0%}' if busy else 'n/a'} "
            f"| {split} | {agreeing} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=pathlib.Path, required=True)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--model", help="a model folder or Hub id in place of the paper-scale model (smoke runs)")
    parser.add_argument(
        "--runs", default="branch:160", help="comma-separated CODE:BATCH_SECONDS (default: %(default)s)"
    )
    parser.add_argument("--baseline-src", type=pathlib.Path, help="the src/ folder of the code to compare with")
    parser.add_argument("--deadline-s", type=float, default=float("inf"), help="skip runs that would start after this")
    parser.add_argument("tokenize_options", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    options = [option for option in args.tokenize_options if option != "--"]
    runs = [entry.split(":") for entry in args.runs.split(",")]
    for entry in runs:
        if len(entry) != 2 or entry[0] not in ("branch", "branch-autotuned", "baseline") or float(entry[1]) <= 0:
            parser.error(
                "--runs entries are branch:SECONDS, branch-autotuned:SECONDS or baseline:SECONDS, "
                f"got {':'.join(entry)!r}"
            )
    if any(code == "baseline" for code, _ in runs) and not (args.baseline_src and args.baseline_src.is_dir()):
        parser.error("baseline runs need --baseline-src, the src/ folder of the code to compare with")

    began = time.perf_counter()
    clips = make_corpus(args.work_dir / "corpus", args.hours)
    model_dir = args.model or args.work_dir / "paper_model"
    if args.model is None and not (model_dir / "config.json").exists():
        StableCodecModel(StableCodecConfig()).to(torch.bfloat16).save_pretrained(model_dir)
    print(f"corpus of {clips} clips and the model ready in {time.perf_counter() - began:.0f} s", flush=True)

    summary = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "runs": []}
    for code, batch_seconds in runs:
        left = args.deadline_s - (time.perf_counter() - began)
        if left < 30:
            print(f"skipped {code}:{batch_seconds}: {left:.0f} s left before the deadline", flush=True)
            summary["runs"].append({"code": code, "batch_seconds": float(batch_seconds), "exit_code": "skipped"})
            continue
        print(f"--- {code}, batch {batch_seconds} s", flush=True)
        summary["runs"].append(run_once(args, code, batch_seconds, options, model_dir, timeout=left))
        agreement(summary["runs"])
        summary["table"] = markdown(summary["runs"])
        if args.json:  # after every run: a run cut short by the device's time limit leaves the earlier ones
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary["runs"]))


if __name__ == "__main__":
    main()
