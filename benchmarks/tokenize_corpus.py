"""End-to-end speed of the corpus tokenizer: a folder of FLAC files to Parquet shards, as `stable-codec tokenize`
runs it, on the paper-scale model (random weights). Writes the corpus (synthetic voiced speech, `--hours` of 10 s
clips at 16 kHz) and the model once, then runs the tokenizer and prints the manifest's per-process time split.

    python benchmarks/tokenize_corpus.py --work-dir /tmp/tokenize --hours 8 -- --dtype bfloat16 --compile

Everything after `--` goes to `stable-codec tokenize`. Results: benchmarks/results/tokenize_<device>.json.
"""

import argparse
import json
import multiprocessing
import os
import pathlib
import subprocess
import sys
import time

import soundfile
import torch


REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.model_helpers import speechlike_audio  # noqa: E402
from transformers_stable_codec import StableCodecConfig, StableCodecModel  # noqa: E402


CLIP_SECONDS, RATE = 10, 16000


def write_clips(arguments) -> None:
    folder, first, count = arguments
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=pathlib.Path, required=True)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--model", help="a model folder or Hub id in place of the paper-scale model (smoke runs)")
    parser.add_argument("tokenize_options", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    options = [option for option in args.tokenize_options if option != "--"]

    started = time.perf_counter()
    clips = make_corpus(args.work_dir / "corpus", args.hours)
    model_dir = args.model or args.work_dir / "paper_model"
    if args.model is None and not (model_dir / "config.json").exists():
        StableCodecModel(StableCodecConfig()).to(torch.bfloat16).save_pretrained(model_dir)
    print(f"corpus of {clips} clips and the model ready in {time.perf_counter() - started:.0f} s", flush=True)

    output_dir = args.work_dir / f"tokens-{time.strftime('%H%M%S')}"
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
    ]
    started = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": path})
    wall = time.perf_counter() - started
    manifest = json.loads((output_dir / "manifest.json").read_text())
    audio_seconds = manifest["audio_hours"] * 3600
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "command": command[2:],
        "exit_code": result.returncode,
        "clips": manifest["clips"],
        "audio_hours": manifest["audio_hours"],
        "wall_seconds_with_startup": wall,
        "realtime_factor_with_startup": audio_seconds / wall,
        "processes": manifest["processes"],
    }
    for process in manifest["processes"]:
        split = ", ".join(f"{name} {value:.1f} s" for name, value in process["seconds"].items())
        print(
            f"rank {process['rank']}: {process['audio_seconds'] / 3600:.2f} h in {process['wall_seconds']:.1f} s "
            f"= {process['realtime_factor']:,.0f}x real time, "
            f"{process['realtime_factor_after_first_window'] or 0:,.0f}x "
            f"after the first window ({split})"
        )
    print(f"with start-up (model load, compile, workers): {audio_seconds / wall:,.0f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
