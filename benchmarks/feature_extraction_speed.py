#!/usr/bin/env python
"""Speed of the feature extractor on 44.1 kHz stereo → 16 kHz mono, loudness-normalized: the exact path (the
original's windowed-sinc resampler and BS.1770 meter, in torch) against libsoxr in its place (each channel by
libsoxr at its default HQ quality, then the extractor at 16 kHz: mixdown, our meter, padding) and against the path
the extractor had before issue #13 (libsoxr on the float64 mixdown, then pyloudnorm). soxr and pyloudnorm come with
the `dev` extra; the extractor itself uses neither.

The three are called in turn within each round, in one process (so machine load affects them alike), after a warm-up
round; the table gives audio-seconds per second (median, min, max over the rounds) and, per round, the speed ratio of
the exact path to each other one. With `--device cuda` the exact path runs on the GPU (bracketed by synchronizations;
the input starts on the CPU, the features stay on the GPU) and the two libsoxr paths on the CPU, as they only can.

    python benchmarks/feature_extraction_speed.py                                  # 2 CPU threads
    python benchmarks/feature_extraction_speed.py --device cuda --batch 16 --json benchmarks/results/fe_h200.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from benchmarks.benchmark_codecs import synchronize
from tests.model_helpers import speechlike_audio
from transformers_stable_codec import StableCodecFeatureExtractor


INPUT_RATE = 44100


def previous_path(clips: list[np.ndarray], hop_length: int = 640) -> list[np.ndarray]:
    """The extractor before issue #13, as it was: float64 mixdown, libsoxr to 16 kHz, pyloudnorm on the clip padded to
    whole frames, gain to -20 LUFS, 0.95 peak protection."""
    import pyloudnorm
    import soxr

    meter = pyloudnorm.Meter(16000)
    out = []
    for clip in clips:
        mono = soxr.resample(clip.astype(np.float64).mean(axis=0), INPUT_RATE, 16000)
        padded = np.pad(mono, (0, -len(mono) % hop_length))
        normalized = mono * 10.0 ** ((-20.0 - meter.integrated_loudness(padded)) / 20.0)
        peak = np.abs(normalized).max()
        out.append((normalized * (0.95 / peak) if peak > 1.0 else normalized).astype(np.float32))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    parser.add_argument("--batch", type=int, default=1, help="clips per call")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "feature_extraction_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    stereo = speechlike_audio(2 * args.batch, int(args.seconds * INPUT_RATE), INPUT_RATE, torch.device("cpu"))
    clips = [pair.numpy() for pair in stereo.reshape(args.batch, 2, -1)]
    exact = StableCodecFeatureExtractor()

    def run_soxr():
        import soxr

        resampled = [soxr.resample(np.ascontiguousarray(clip.T), INPUT_RATE, 16000).T for clip in clips]
        return exact(resampled, sampling_rate=16000, return_tensors="pt")

    def run_exact():
        features = exact(clips, sampling_rate=INPUT_RATE, return_tensors="pt", device=device)
        synchronize(device)
        return features

    variants = {
        "exact (sinc + BS.1770, torch)": run_exact,
        "libsoxr resampling, then the extractor": run_soxr,
        "previous (soxr + pyloudnorm)": lambda: previous_path(clips),
    }
    seconds = {name: [] for name in variants}
    for round_index in range(args.rounds + 1):  # round 0 warms up (kernels, caches, CUDA context)
        for name, function in variants.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            elapsed = time.perf_counter() - start
            if round_index:
                seconds[name].append(elapsed)

    audio_seconds = args.batch * args.seconds
    exact_name = next(iter(variants))
    rows = {}
    for name, times in seconds.items():
        speeds = [audio_seconds / elapsed for elapsed in times]
        ratios = [other / mine for mine, other in zip(seconds[exact_name], times)]  # exact speed / this speed
        rows[name] = {
            "audio_s_per_s": {"median": statistics.median(speeds), "min": min(speeds), "max": max(speeds)},
            "exact_speed_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        }
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"44.1 kHz stereo -> 16 kHz, {args.batch} x {args.seconds:g} s per call, {args.rounds} interleaved rounds, "
        f"exact path on {device} ({where}), torch threads {args.threads}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'path':40s} {'audio-s/s median':>17s} {'min':>9s} {'max':>9s}   exact / this (median, min, max)")
    for name, row in rows.items():
        speed, ratio = row["audio_s_per_s"], row["exact_speed_ratio"]
        print(
            f"{name:40s} {speed['median']:17.1f} {speed['min']:9.1f} {speed['max']:9.1f}   "
            f"{ratio['median']:.2f} ({ratio['min']:.2f}, {ratio['max']:.2f})"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: str(value) for key, value in vars(args).items()}
    # Other processes on the machine slow torch's OpenMP threads far more than single-threaded libsoxr: keep the load.
    record = {"settings": settings, "device": where, "torch": torch.__version__, "load_average": os.getloadavg()}
    args.json.write_text(json.dumps({**record, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
