#!/usr/bin/env python
"""Long-form coding of the paper-scale model: peak memory against length (one call per length, up to an hour),
and the chunked path (`chunk_length_s`) against the unchunked one on the same hour.

For each dtype and each length it encodes and decodes one clip in a single call and records the time and the peak
CUDA memory (weights included); the growth per hour is the slope between the two longest lengths. Then, in the
first dtype, it codes the longest clip again in chunks and compares each half with the single call: the encoder's
latents (max |difference| / max |latent|) and codes (share identical), and the decoder's audio from the same codes
(max |difference|). The audio of the chunked encode + decode is recorded too: where a latent lies within float
rounding of an FSQ level boundary, the two encodes may pick neighbouring codes, and the audio differs around that
frame. Prints a table and writes JSON.

    python3 benchmarks/long_form.py --json $OUT/long_form.json            # on the GPU machine
    python benchmarks/long_form.py --device cpu --config tiny --lengths 20 60 --chunk-length-s 10
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from benchmarks.benchmark_codecs import GIB, configure_precision, load_config, synchronize
from tests.model_helpers import speechlike_audio
from transformers_stable_codec import StableCodecModel


def code(model, audio, chunk_length_s=None):
    """One encode and one decode; returns latents, codes, audio and seconds."""
    synchronize(audio.device)
    start = time.perf_counter()
    encoded = model.encode(audio, chunk_length_s=chunk_length_s)
    decoded = model.decode(encoded.audio_codes, chunk_length_s=chunk_length_s).audio_values
    synchronize(audio.device)
    return encoded.latents, encoded.audio_codes, decoded, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="paper", help="'paper' (953M), 'tiny', or a path to a model config")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--lengths", nargs="+", type=float, default=[60, 600, 1800, 3600], help="seconds")
    parser.add_argument("--chunk-length-s", type=float, default=600)
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    configure_precision()
    device = torch.device(args.device)
    config = load_config(args.config)
    torch.manual_seed(0)
    model = StableCodecModel(config).eval().requires_grad_(False)
    model.set_attn_implementation(args.attn_implementation)
    longest = max(args.lengths)
    clip = speechlike_audio(1, int(longest * config.sampling_rate), config.sampling_rate, torch.device("cpu"))
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "attention": args.attn_implementation,
        "memory": [],
        "chunked": None,
    }

    for dtype_name in args.dtypes:
        model.to(device, {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name])
        for seconds in sorted(args.lengths):
            audio = clip[..., : int(seconds * config.sampling_rate)].to(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode():
                latents, codes, decoded, elapsed = code(model, audio)
            peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")
            row = dict(
                dtype=dtype_name, seconds=seconds, elapsed_s=elapsed, x_real_time=seconds / elapsed, peak_gib=peak
            )
            results["memory"].append(row)
            print(
                f"{dtype_name} {seconds:>6.0f} s in one call: {elapsed:7.2f} s ({seconds / elapsed:,.0f}x), "
                f"peak {peak:.2f} GiB",
                flush=True,
            )
            if dtype_name == args.dtypes[0] and seconds == longest:
                reference = (latents, codes, decoded)
            del latents, codes, decoded

        rows = [row for row in results["memory"] if row["dtype"] == dtype_name]
        if len(rows) >= 2 and device.type == "cuda":
            (short, long) = rows[-2], rows[-1]
            per_hour = (long["peak_gib"] - short["peak_gib"]) / (long["seconds"] - short["seconds"]) * 3600
            results.setdefault("gib_per_hour", {})[dtype_name] = per_hour
            print(f"{dtype_name}: peak memory grows by {per_hour:.2f} GiB per hour of audio", flush=True)

        if dtype_name == args.dtypes[0]:
            long_audio = clip.to(device)
            ref_latents, ref_codes, ref_audio = reference
            with torch.inference_mode():
                latents, codes, decoded, elapsed = code(model, long_audio, args.chunk_length_s)
                decoded_from_same_codes = model.decode(ref_codes, chunk_length_s=args.chunk_length_s).audio_values
            chunked = dict(
                dtype=dtype_name,
                seconds=longest,
                chunk_length_s=args.chunk_length_s,
                elapsed_s=elapsed,
                latents_max_relative=float((latents - ref_latents).abs().max() / ref_latents.abs().max()),
                codes_identical=float((codes == ref_codes).double().mean()),
                codes_differing=int((codes != ref_codes).any(dim=1).sum()),  # frames; codes: (batch, tokens, frames)
                audio_max_abs=float((decoded_from_same_codes.float() - ref_audio.float()).abs().max()),
                end_to_end_audio_max_abs=float((decoded.float() - ref_audio.float()).abs().max()),
                audio_max=float(ref_audio.abs().max()),
            )
            results["chunked"] = chunked
            print(
                f"chunked ({args.chunk_length_s:g} s chunks) vs one call, {longest:g} s, {dtype_name}: "
                f"encoder: latents {chunked['latents_max_relative']:.2e} (max, relative), codes "
                f"{100 * chunked['codes_identical']:.4f}% identical ({chunked['codes_differing']} frames differ); "
                f"decoder, same codes: audio "
                f"{chunked['audio_max_abs']:.2e} max abs (peak |audio| {chunked['audio_max']:.3f}); encode + decode: "
                f"audio {chunked['end_to_end_audio_max_abs']:.2e} max abs; {elapsed:.2f} s",
                flush=True,
            )
            del latents, codes, decoded, decoded_from_same_codes, reference
        model.to("cpu")

    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
