#!/usr/bin/env python
"""Streaming decode (`StableCodecModel.decode_stream`): first-audio latency against divergence from offline decode,
for lookaheads from one frame (40 ms) to the decoder's whole right receptive field (exact), and the real-time factor
of one stream and of many concurrent streams.

For each lookahead K it
- streams the codes of a speech clip in one-frame chunks (as a speech LM emits them) through `decode_stream` with
  `--step-frames` S and `--context-frames` C, and compares the audio with `decode` of all codes: SI-SDR (dB, higher
  is closer; about 100+ dB means equal up to float rounding) and multi-scale mel distance (0 for equal);
- times one steady-state decoder call, on the C + S + K frames that every step after the warm-up decodes, for a
  batch of 1 and of `--streams` streams (the fastest of `--repeats` after a warm-up call): the compute per step, and
  the real-time factor, compute / (S x 40 ms), which must stay below 1 to keep up with the stream;
- reports the first-audio latency: algorithmic, (K + S) frames x 40 ms, as the first step's audio needs its S frames
  and K more, plus the compute of one step of one stream;
- with `--compile-modes` (at `--compile-lookaheads`), the same for `decode_stream(compile_mode=...)`: the compiled
  step on its one padded-and-masked window shape, the compile time of each batch size apart, and the compiled
  stream of the clip against the eager one.

Every row records the machine's load averages before and after its timings (`os.getloadavg`), as on a shared
machine the neighbours' load is part of each figure; the JSON is rewritten after every row.

Speech: `--wav`, else espeak-ng if installed, else the tests' synthetic voiced speech (so that it runs unattended on
a machine without espeak-ng or network). Models: `demo` (the trained demo model shipped with the package) or `paper`
(the paper-scale config, 953M parameters, random weights: its divergences show how far the receptive field reaches
in an untrained net, not what trained weights give). Results are merged into benchmarks/results/streaming_<device>.json
(one entry per `--name`, default the model), and docs/streaming.png is redrawn from every streaming_*.json there
(a `--json` elsewhere, e.g. the GPU machine's $OUT, is only written).

    python benchmarks/streaming.py --device cpu --model demo
    python benchmarks/streaming.py --device cpu --model paper --name paper_context64 --seconds 2 --context-frames 64 \
        --lookaheads 1 16 --step-frames 5 --streams 1 64 --repeats 1
    python benchmarks/streaming.py --device cuda --model demo
    python benchmarks/streaming.py --device cuda --model paper
    bash scripts/streaming_compiled_on_device.sh  # eager vs CUDA graphs on the GPU, demo and paper scale
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch


REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from benchmarks.benchmark_codecs import configure_precision, load_config, synchronize
from tests.model_helpers import speechlike_audio
from transformers_stable_codec import StableCodecFeatureExtractor, StableCodecModel
from transformers_stable_codec.metrics.functional import mel_distance, si_sdr
from transformers_stable_codec.modeling_stable_codec import STREAM_COMPILE_MODES


DEMO_MODEL = REPO / "src" / "transformers_stable_codec" / "demo_model"
RESULTS = REPO / "benchmarks" / "results"
PLOT = REPO / "docs" / "streaming.png"
TEXT = (
    "A speech model emits its tokens one frame at a time, and the listener should hear the first words before the "
    "sentence is finished. How much of the future does the decoder need to see?"
)


def speech(wav: Path | None, seconds: float, extractor: StableCodecFeatureExtractor) -> tuple[torch.Tensor, str]:
    """Model input (1, 1, samples) of at most `seconds`, and where it came from."""
    rate = extractor.sampling_rate
    if wav is None and shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as folder:
            wav_path = Path(folder) / "speech.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav_path), TEXT], check=True, capture_output=True)
            audio, source_rate = soundfile.read(wav_path, dtype="float32")
        source = "espeak-ng"
    elif wav is not None:
        audio, source_rate = soundfile.read(wav, dtype="float32", always_2d=True)
        audio, source = audio.mean(axis=1), str(wav)
    else:
        clip = speechlike_audio(1, int(seconds * rate), rate, torch.device("cpu"))
        return clip, "synthetic voiced speech (tests/model_helpers.speechlike_audio)"
    values = extractor(audio, sampling_rate=source_rate, return_tensors="pt")["input_values"]
    return values[..., : int(seconds * rate)], source


def fastest_seconds(function, device: torch.device, repeats: int) -> float:
    """The fastest of `repeats` calls after a warm-up (allocations, kernel selection): on a shared machine the
    others time the neighbours."""
    function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model, codes, reference, args, device, run: dict, save) -> None:
    """One row per lookahead, appended to `run["rows"]` and `save`d at once (a run cut short keeps its rows):
    divergence of the stream from `reference`, and steady-state compute per step."""
    left, right = model.decoder_receptive_field
    context = run["context_frames"]
    lookaheads = sorted({right if k == "full" else min(int(k), right) for k in args.lookaheads})
    frame_ms = 1000 / model.frame_rate
    bottleneck = None if args.bottleneck == "none" else args.bottleneck
    for lookahead in lookaheads:
        with torch.inference_mode():
            chunks = codes.split(1, dim=-1)
            stream = model.decode_stream(chunks, bottleneck, lookahead, context, args.step_frames)
            streamed = torch.cat(list(stream), dim=-1)
        prediction = streamed[0, 0, : reference.size].float().cpu().numpy()
        row = dict(
            lookahead_frames=lookahead,
            algorithmic_latency_ms=(lookahead + args.step_frames) * frame_ms,
            si_sdr_db=si_sdr(prediction, reference),
            mel_distance=mel_distance(prediction, reference, model.sampling_rate),
            max_abs_difference=float(np.abs(prediction - reference).max()),
            window_frames=context + args.step_frames + lookahead,
        )
        row["load_average_before"] = os.getloadavg()
        for streams in args.streams:
            window = torch.randint(0, 2, (streams, codes.shape[1], row["window_frames"]), device=device)
            latents = model._bottleneck(bottleneck).decode(window).to(model.dtype)
            with torch.inference_mode():
                seconds = fastest_seconds(lambda: model.decoder(latents, None), device, args.repeats)
            row[f"step_compute_ms_{streams}"] = 1000 * seconds
            row[f"real_time_factor_{streams}"] = 1000 * seconds / (args.step_frames * frame_ms)
        if args.compile_modes and (args.compile_lookaheads is None or lookahead in compile_lookaheads(args, right)):
            row["compiled"] = {
                mode: measure_compiled(model, codes, streamed, reference, row, mode, args, device)
                for mode in args.compile_modes
            }
        row["load_average_after"] = os.getloadavg()
        row["first_audio_ms"] = row["algorithmic_latency_ms"] + row[f"step_compute_ms_{args.streams[0]}"]
        run["rows"].append(row)
        save()
        print(format_row(row, args.streams), flush=True)


def compile_lookaheads(args, right: int) -> set[int]:
    return {right if k == "full" else min(int(k), right) for k in args.compile_lookaheads}


def measure_compiled(model, codes, eager_stream, reference, row, mode, args, device) -> dict:
    """`decode_stream(compile_mode=mode)` at this row's windows: the compiled step's compute for each batch size
    (after its compile, which the first call does, timed apart), and the compiled stream of the clip against the
    eager one (the same audio up to float rounding, which fusion changes)."""
    bottleneck = None if args.bottleneck == "none" else args.bottleneck
    step = model._stream_coder(model.decoder, mode)
    frame_ms = 1000 / model.frame_rate
    result = {}
    for streams in args.streams:
        window = torch.randint(0, 2, (streams, codes.shape[1], row["window_frames"]), device=device)
        latents = model._bottleneck(bottleneck).decode(window).to(model.dtype)
        frames_valid = torch.full((streams,), row["window_frames"], dtype=torch.long, device=device)
        with torch.inference_mode():
            synchronize(device)
            start = time.perf_counter()
            step(latents, frames_valid)  # compiles this shape (and, with CUDA graphs, runs the warm-up)
            synchronize(device)
            result[f"compile_s_{streams}"] = time.perf_counter() - start
            seconds = fastest_seconds(lambda: step(latents, frames_valid), device, args.repeats)
        result[f"step_compute_ms_{streams}"] = 1000 * seconds
        result[f"real_time_factor_{streams}"] = 1000 * seconds / (args.step_frames * frame_ms)
        result[f"speedup_{streams}"] = row[f"step_compute_ms_{streams}"] / result[f"step_compute_ms_{streams}"]
    with torch.inference_mode():
        chunks = codes.split(1, dim=-1)
        windows = (row["lookahead_frames"], row["window_frames"] - row["lookahead_frames"] - args.step_frames)
        stream = model.decode_stream(chunks, bottleneck, *windows, args.step_frames, compile_mode=mode)
        streamed = torch.cat(list(stream), dim=-1)
    prediction = streamed[0, 0, : reference.size].float().cpu().numpy()
    result["max_abs_difference_to_eager_stream"] = float((streamed.float() - eager_stream.float()).abs().max())
    result["si_sdr_db"] = si_sdr(prediction, reference)
    return result


def format_row(row: dict, streams: list[int]) -> str:
    compute = "  ".join(
        f"{count:>3} streams {row[f'step_compute_ms_{count}']:8.1f} ms/step "
        f"(RTF {row[f'real_time_factor_{count}']:.3f})"
        for count in streams
    )
    for mode, result in row.get("compiled", {}).items():
        compute += (
            f"\n        compiled ({mode}): "
            + "  ".join(
                f"{count:>3} streams {result[f'step_compute_ms_{count}']:8.1f} ms/step "
                f"(RTF {result[f'real_time_factor_{count}']:.3f}, {result[f'speedup_{count}']:.2f}x eager, "
                f"compile {result[f'compile_s_{count}']:.0f} s)"
                for count in streams
            )
            + f"  vs eager stream: max |diff| {result['max_abs_difference_to_eager_stream']:.2e}"
        )
    return (
        f"K={row['lookahead_frames']:>5}  first audio {row['algorithmic_latency_ms']:7.0f} ms + compute = "
        f"{row['first_audio_ms']:8.1f} ms  SI-SDR {row['si_sdr_db']:7.2f} dB  mel {row['mel_distance']:.4f}  {compute}"
    )


def plot(results_folder: Path, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (sdr_axis, mel_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for path in sorted(results_folder.glob("streaming_*.json")):
        device = path.stem.removeprefix("streaming_")
        for model_name, run in json.loads(path.read_text()).items():
            if run.get("load_average_start", [0])[0] > run.get("cpu_count", 1):
                # More runnable jobs than cores: the compute, part of the latency axis, is the neighbours' doing.
                print(f"{path.name} {model_name}: measured on an overloaded machine, not plotted")
                continue
            rows = run["rows"]
            if len(rows) < 2:  # one lookahead (e.g. the compiled runs) is a point, not a trade-off curve
                continue
            label = f"{model_name}, {device} (C={run['context_frames']}, S={run['step_frames']})"
            latency = [row["first_audio_ms"] for row in rows]
            # Exact streams reach 100+ dB (float rounding): everything above 60 dB is drawn at 60 (inaudible).
            sdr_axis.plot(latency, [min(row["si_sdr_db"], 60) for row in rows], marker="o", label=label)
            mel_axis.plot(latency, [row["mel_distance"] for row in rows], marker="o", label=label)
    sdr_axis.set(
        xscale="log",
        xlabel="first-audio latency, ms (lookahead + step + compute)",
        ylabel="SI-SDR vs offline decode, dB (capped at 60)",
        title="Divergence from offline decode",
    )
    mel_axis.set(
        xscale="log",
        xlabel="first-audio latency, ms (lookahead + step + compute)",
        ylabel="mel distance vs offline decode",
        title="Spectral divergence (0: equal)",
    )
    for axis in (sdr_axis, mel_axis):
        axis.grid(True, which="both", alpha=0.3)
    sdr_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(target, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="demo", choices=["demo", "paper"])
    parser.add_argument("--wav", type=Path, help="speech to stream (default: espeak-ng, else synthetic speech)")
    parser.add_argument("--seconds", type=float, default=8.0, help="at most this much of the speech")
    parser.add_argument(
        "--lookaheads",
        nargs="+",
        default=["1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "full"],
        help="frames; 'full': the decoder's right receptive field (exact); larger values are cut to it",
    )
    parser.add_argument("--context-frames", type=int, help="default: the decoder's left receptive field (exact)")
    parser.add_argument("--step-frames", type=int, default=1)
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 64], help="batch sizes timed")
    parser.add_argument("--bottleneck", default="2x15625_700bps")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flex_attention"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--compile-modes",
        nargs="+",
        default=[],
        choices=STREAM_COMPILE_MODES,
        help="also time decode_stream(compile_mode=...) for these modes (reduce-overhead: CUDA graphs)",
    )
    parser.add_argument(
        "--compile-lookaheads", nargs="+", help="the lookaheads (as in --lookaheads) to compile for; default: all"
    )
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/streaming_<device>.json")
    parser.add_argument("--name", help="the run's key in the JSON file (default: --model); one key per run")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    # Every lookahead and batch size is a shape of its own, compiled anew; dynamo's default stops at 8 per function.
    torch._dynamo.config.recompile_limit = 64
    precision = configure_precision()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.model == "demo":
        model = StableCodecModel.from_pretrained(DEMO_MODEL)
    else:
        torch.manual_seed(0)
        model = StableCodecModel(load_config("paper"))
    model = model.to(device, dtype).eval().requires_grad_(False)
    model.set_attn_implementation(args.attn_implementation)
    extractor = StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length)
    audio, source = speech(args.wav, args.seconds, extractor)
    bottleneck = None if args.bottleneck == "none" else args.bottleneck
    with torch.inference_mode():
        codes = model.encode(audio.to(device, dtype), posthoc_bottleneck=bottleneck).audio_codes
        offline = model.decode(codes, posthoc_bottleneck=bottleneck).audio_values
    reference = offline[0, 0, : audio.shape[-1]].float().cpu().numpy()
    print(
        f"{args.model} on {args.device}: {audio.shape[-1] / model.sampling_rate:.2f} s of {source}, "
        f"{codes.shape[-1]} frames, decoder receptive field {model.decoder_receptive_field}",
        flush=True,
    )

    left, right = model.decoder_receptive_field
    run = dict(
        receptive_field=[left, right],
        context_frames=left if args.context_frames is None else args.context_frames,
        rows=[],
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)",
        torch=torch.__version__,
        parameters=model.num_parameters(),
        weights="trained demo model" if args.model == "demo" else "random (paper-scale config)",
        speech=source,
        seconds=audio.shape[-1] / model.sampling_rate,
        step_frames=args.step_frames,
        streams=args.streams,
        bottleneck=args.bottleneck,
        dtype=args.dtype,
        attention=args.attn_implementation,
        precision=precision,
        command=" ".join(sys.argv),
        # On a shared machine the neighbours' load is part of every timing: (1, 5, 15)-minute load averages.
        cpu_count=os.cpu_count(),
        load_average_start=os.getloadavg(),
    )
    target = args.json or RESULTS / f"streaming_{device.type}.json"
    target.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        run["load_average_end"] = os.getloadavg()
        merged = json.loads(target.read_text()) if target.exists() else {}
        merged[args.name or args.model] = run
        target.write_text(json.dumps(merged, indent=1))

    measure(model, codes, reference, args, device, run, save)
    if target.parent.resolve() == RESULTS.resolve():
        plot(RESULTS, PLOT)
        print(f"wrote {target} and {PLOT}")
    else:  # a run elsewhere (the GPU machine's $OUT): its JSON joins benchmarks/results/, then the plot is redrawn
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
