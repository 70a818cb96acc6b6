"""Peak memory of `stable-codec` on one long speech file: makes the file (a short speech clip repeated to the
length), runs each command line on it in a child process, and prints each child's exit status, wall time and peak
RSS as a line of JSON.

    python scripts/long_file_peak_rss.py --minutes 10 --commands encode,decode,reconstruct [-- more options]

The clip is `--sentence` (any 16 kHz audio file), else espeak-ng speaking one sentence, else (no espeak-ng, as on the
GPU machine) a synthetic voiced signal. Options after `--` go to every command (e.g. `-- --model folder --device
cuda`; not --bottleneck, which decode lacks).
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile


SENTENCE = "Stable Codec turns speech into a few hundred bits per second and back."
RATE = 16000


def speech_clip(sentence: str | None, workdir: pathlib.Path) -> np.ndarray:
    """A few seconds of mono audio at 16 kHz to repeat."""
    if sentence is None and shutil.which("espeak-ng") and shutil.which("sox"):
        raw = workdir / "sentence.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), SENTENCE], check=True, capture_output=True)
        sentence = str(workdir / "sentence.16k.wav")
        subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", sentence], check=True)
    if sentence is not None:
        audio, rate = soundfile.read(sentence, dtype="float32", always_2d=True)
        if rate != RATE:
            raise SystemExit(f"{sentence}: give a {RATE} Hz clip (sox in.wav -r {RATE} out.wav)")
        return audio.mean(axis=1)
    # A voiced stand-in: syllables of a harmonic tone with a gliding pitch, separated by pauses.
    time_axis = np.arange(int(0.25 * RATE)) / RATE
    syllables = []
    for index in range(12):
        pitch = 110 + 40 * np.sin(index)
        tone = sum(
            np.sin(2 * np.pi * pitch * harmonic * time_axis * (1 + 0.1 * time_axis)) / harmonic
            for harmonic in range(1, 8)
        )
        syllables += [0.1 * tone * np.hanning(len(time_axis)), np.zeros(int(0.08 * RATE))]
    return np.concatenate(syllables).astype(np.float32)


def make_long_speech(path: pathlib.Path, minutes: float, clip: np.ndarray) -> pathlib.Path:
    """`clip` repeated to `minutes`, written as 16-bit WAV block by block (this process stays small)."""
    total = round(minutes * 60 * RATE)
    with soundfile.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as handle:
        written = 0
        while written < total:
            block = clip[: total - written]
            handle.write(block)
            written += len(block)
    return path


def run_measured(arguments: list[str]) -> dict:
    """Runs `python -m transformers_stable_codec.cli ARGUMENTS`; its exit status, wall time and peak RSS (os.wait4
    gives the rusage of this one child, where RUSAGE_CHILDREN would give the largest of all children so far)."""
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
        "arguments": arguments,
        "returncode": child.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux reports kibibytes
        "output_tail": output[-2000:],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--commands", default="reconstruct", help="comma-separated: encode, decode, reconstruct")
    parser.add_argument("--sentence", help="a short 16 kHz speech clip to repeat (default: espeak-ng)")
    parser.add_argument("--workdir", help="where to write the file and outputs (default: a temporary folder)")
    parser.add_argument("extra", nargs="*", help="more stable-codec options, after --")
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="long_file_"))
    workdir.mkdir(parents=True, exist_ok=True)
    clip = speech_clip(args.sentence, workdir)
    source = make_long_speech(workdir / f"speech_{args.minutes:g}min.wav", args.minutes, clip)
    codes = workdir / "codes" / f"{source.stem}.codes.safetensors"
    inputs = {"encode": source, "reconstruct": source, "decode": codes}
    outputs = {"encode": workdir / "codes", "reconstruct": workdir / "reconstructed", "decode": workdir / "decoded"}
    results = []
    for command in args.commands.split(","):
        arguments = [command, str(inputs[command]), "-o", str(outputs[command]), "--overwrite", *args.extra]
        results.append(run_measured(arguments))
        print(json.dumps({"minutes": args.minutes, "command": command, **results[-1]}), flush=True)  # one line each
    sys.exit(max(result["returncode"] for result in results))


if __name__ == "__main__":
    main()
