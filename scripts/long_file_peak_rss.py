"""Peak memory of `stable-codec` on one long speech file: makes the file (espeak-ng speech repeated to the length),
runs a command line on it in a child process, and prints the child's wall time and peak RSS as JSON.

    python scripts/long_file_peak_rss.py --minutes 10 --command reconstruct [-- extra stable-codec options]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile


SENTENCE = "Stable Codec turns speech into a few hundred bits per second and back."


def make_long_speech(path: pathlib.Path, minutes: float, rate: int = 16000) -> pathlib.Path:
    """espeak-ng speech repeated to `minutes`, written as 16-bit WAV at `rate` block by block (memory stays small)."""
    raw = path.with_name("sentence.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), SENTENCE], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(rate), str(raw.with_suffix(".16k.wav"))], check=True)
    sentence, _ = soundfile.read(raw.with_suffix(".16k.wav"), dtype="float32")
    total = round(minutes * 60 * rate)
    with soundfile.SoundFile(path, "w", rate, 1, subtype="PCM_16") as handle:
        written = 0
        while written < total:
            block = sentence[: total - written]
            handle.write(block)
            written += len(block)
    return path


def run_measured(arguments: list[str]) -> dict:
    """Runs `python -m transformers_stable_codec.cli ARGUMENTS`; its exit status, wall time and peak RSS (os.wait4
    reads the rusage of this one child, not of every child of the process)."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "transformers_stable_codec.cli", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": child.returncode,
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports kibibytes
        "output_tail": output[-3000:],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--command", choices=("encode", "reconstruct", "evaluate"), default="reconstruct")
    parser.add_argument("--workdir", help="where to write the file and outputs (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="more stable-codec options, after --")
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="long_file_"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = make_long_speech(workdir / f"speech_{args.minutes:g}min.wav", args.minutes)
    outputs = [] if args.command == "evaluate" else ["-o", str(workdir / "out"), "--overwrite"]
    result = run_measured([args.command, str(source), *outputs, *args.extra])
    print(json.dumps({"minutes": args.minutes, "command": args.command, "extra": args.extra, **result}, indent=2))
    sys.exit(result["returncode"])


if __name__ == "__main__":
    main()
