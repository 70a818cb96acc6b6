#!/usr/bin/env python
"""What each precision costs in quality, against fp32 on the same device (TF32 off).

For each model (the demo model, trained; optionally a random-weight config such as the paper-scale one) and each
precision (fp32, bf16, fp16, int8, fp8; int8 and fp8 quantize the transformer projections with torchao and compute in
bf16 around them): the share of codes equal to fp32's, for the training-time FSQ and every post-hoc preset; the
relative error of the pre-bottleneck latents, ||latents - latents_fp32|| / ||latents_fp32||; and for the demo model,
on held-out espeak-ng speech (sentences it never heard, in voices it never heard), SI-SDR, mel distance, wideband
PESQ and STOI of its reconstruction (training FSQ) against the input, and SI-SDR against fp32's reconstruction.
A precision that cannot run (fp8 on a CPU) is recorded with its error.

Local (CPU): precision_quality.py --json docs/precision_quality_cpu.json
The GPU machine has no espeak-ng, sox, pesq, pystoi or torchmetrics: carry the speech made here (`--speech`, made
on first use), let it save the reconstructions (`--save-audio $OUT/audio.pt`, no scores there), and score them here:
    precision_quality.py --score audio.pt --json quality.json  (the device's JSON, updated in place)
"""

import argparse
import contextlib
import copy
import json
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

from benchmarks import benchmark_codecs as bench
from benchmarks.precision_speed import STATIC_INT8, input_dtype
from tests.model_helpers import speechlike_audio
from transformers_stable_codec import POSTHOC_BOTTLENECK_PRESETS, StableCodecFeatureExtractor, StableCodecModel
from transformers_stable_codec.command_support import default_model
from transformers_stable_codec.quantization import compile_int8_static, quantize_model


PRECISIONS = list(bench.DTYPES) + [STATIC_INT8]
BOTTLENECKS = ["training"] + sorted(POSTHOC_BOTTLENECK_PRESETS)
SPEECH = REPO / "outputs" / "precision_quality" / "heldout_speech.pt"
# Held out from the demo model's training: connected sentences (it heard single words joined with pauses, from a
# 390-word vocabulary) in voices outside its eight, made of espeak-ng voice variants (m5, f5, david) that the demo
# corpus's larger speaker set also keeps out of training.
SENTENCES = [
    "Stable Codec turns speech into a few hundred bits per second and back.",
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Please remember to bring the blue folder to the meeting on Thursday.",
    "A gentle breeze carried the smell of rain across the quiet valley.",
    "Numbers like seventeen and forty two are harder to hear than vowels.",
    "She asked whether the train to Edinburgh would leave on time tonight.",
]
HELDOUT_VOICES = [("en-gb-scotland+m5", 150, 45), ("en-029+f5", 145, 60), ("en-us+david", 155, 40)]
AUDIO_METRICS = ("si_sdr", "mel_distance", "wideband_pesq", "stoi")


def heldout_speech(path: Path) -> dict:
    """The held-out clips, made with espeak-ng on first use and kept in `path` (the GPU machine has no espeak-ng):
    each clip as the demo model's feature extractor prepares it, (1, 1, samples) at 16 kHz."""
    if path.exists():
        return torch.load(path)
    from transformers_stable_codec.training.synthetic_corpus import synthesize_word

    extractor = StableCodecFeatureExtractor.from_pretrained(default_model())
    clips, labels = [], []
    for index, sentence in enumerate(SENTENCES):
        voice = HELDOUT_VOICES[index % len(HELDOUT_VOICES)]
        audio = synthesize_word(sentence, voice, extractor.sampling_rate)
        clips.append(extractor(audio, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_values"])
        labels.append({"text": sentence, "voice": voice[0]})
    speech = {"clips": clips, "labels": labels, "sampling_rate": extractor.sampling_rate}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(speech, path)
    return speech


class StaticInt8PerShape:
    """`compile_int8_static`'s codecs in the model's place: one per clip shape (the clip padded with zeros to whole
    frames, as `encode` pads it), never calibrated on the clip it measures: on the other clips of `pool` (cut or
    zero-padded to the shape; real speech for the demo model, leave-one-out), or, where every clip has that shape,
    on speech-like synthetic audio."""

    def __init__(self, base: StableCodecModel, pool: list):
        self.base, self.pool, self.codecs = base, pool, {}
        self._bottleneck = base._bottleneck

    def codec(self, batch: int, frames: int):
        if (batch, frames) not in self.codecs:
            samples = frames * self.base.config.hop_length
            others = [clip for clip in self.pool if -(-clip.shape[-1] // self.base.config.hop_length) != frames]
            calibration = [
                torch.nn.functional.pad(clip, (0, samples - clip.shape[-1]))[..., :samples].expand(batch, 1, samples)
                for clip in others
            ] or speechlike_audio(batch, samples, self.base.config.sampling_rate, torch.device("cpu"), 1)
            self.codecs[batch, frames] = compile_int8_static(self.base, calibration)
        return self.codecs[batch, frames]

    def encode(self, clip: torch.Tensor):
        hop = self.base.config.hop_length
        clip = torch.nn.functional.pad(clip, (0, -clip.shape[-1] % hop))
        return self.codec(clip.shape[0], clip.shape[-1] // hop).encode(clip)

    def decode(self, codes: torch.Tensor):
        return self.codec(codes.shape[0], codes.shape[-1]).decode(codes)


def prepared_model(base: StableCodecModel, precision: str, clips: list):
    if precision == STATIC_INT8:
        return StaticInt8PerShape(base, [clip.float().cpu() for clip in clips])
    model = copy.deepcopy(base).to(bench.DTYPES[precision])
    if precision in bench.QUANTIZED:
        quantize_model(model, precision)
    return model


@torch.inference_mode()
def run_precision(base: StableCodecModel, precision: str, clips: list, reconstruct: bool) -> dict:
    """Codes of every bottleneck, latents (float32) and, where asked, the reconstructions (training FSQ, float32,
    cropped to the input), clip by clip on the model's device."""
    model = prepared_model(base, precision, clips)
    device = next(base.parameters()).device
    out = {"codes": {name: [] for name in BOTTLENECKS}, "latents": [], "audio": []}
    for clip in clips:
        encoded = model.encode(clip.to(device, input_dtype(precision)))
        out["latents"].append(encoded.latents.float().cpu())
        for name in BOTTLENECKS:
            # The bottlenecks read the same latents (in float64); one encoder pass serves them all.
            codes = model._bottleneck(None if name == "training" else name)(encoded.latents)[1]
            out["codes"][name].append(codes.cpu())
        if reconstruct:
            audio = model.decode(encoded.audio_codes).audio_values
            out["audio"].append(audio.float().cpu()[..., : clip.shape[-1]])
    del model
    return out


def relative_error(values: list, reference: list) -> float:
    difference = sum(float((a.double() - b.double()).square().sum()) for a, b in zip(values, reference))
    return (difference / sum(float(b.double().square().sum()) for b in reference)) ** 0.5


def compare(result: dict, reference: dict) -> dict:
    agreement = {}
    for name in BOTTLENECKS:
        equal = sum(int((a == b).sum()) for a, b in zip(result["codes"][name], reference["codes"][name]))
        total = sum(b.numel() for b in reference["codes"][name])
        agreement[name] = equal / total
    return {
        "codes_agreement": agreement,
        "latent_relative_error": relative_error(result["latents"], reference["latents"]),
    }


def audio_scores(reconstructions: list, inputs: list, fp32: list, sampling_rate: int) -> dict:
    """Mean over clips of each metric against the input, and SI-SDR against fp32's reconstruction; a metric whose
    package is missing is named under 'unavailable'."""
    from transformers_stable_codec.metrics.functional import SCORERS, si_sdr

    scores, unavailable = {}, []
    pairs = [(r.flatten().double().numpy(), x.flatten().double().numpy()) for r, x in zip(reconstructions, inputs)]
    for metric in AUDIO_METRICS:
        try:
            values = [SCORERS[metric](r, x, sampling_rate) for r, x in pairs]
        except ImportError:
            unavailable.append(metric)
            continue
        scores[metric] = statistics.mean(values)
    try:
        scores["si_sdr_vs_fp32"] = statistics.mean(
            si_sdr(r.flatten().double().numpy(), f.flatten().double().numpy()) for r, f in zip(reconstructions, fp32)
        )
    except ImportError:
        unavailable.append("si_sdr_vs_fp32")
    except ValueError:  # fp32 against itself: SI-SDR is infinite
        scores["si_sdr_vs_fp32"] = float("inf")
    if unavailable:
        scores["unavailable"] = unavailable
    return scores


def measure_model(name: str, base: StableCodecModel, clips: list, args, audio_store: dict | None, save) -> dict:
    """Every precision of `args` on one model; `save()` after each, so that a run cut short keeps what it measured."""
    reconstruct = name == "demo"
    results, reference = {}, None
    for precision in args.precisions:
        started = time.monotonic()
        try:
            out = run_precision(base, precision, clips, reconstruct)
        except Exception as error:  # noqa: BLE001  (a precision that cannot run is a result)
            status, reason = bench.describe_failure(error, torch.device(args.device))
            results[precision] = {"status": status, "reason": reason, "traceback": traceback.format_exc(limit=-4)}
            print(f"  {name} {precision}: {status}: {reason}", flush=True)
            continue
        if precision == "fp32":
            reference = out
        entry = results[precision] = {"status": "ok", "seconds": time.monotonic() - started}
        if reference is None:
            entry.update(status="error", reason="fp32 did not run: nothing to compare with")
            continue
        entry.update(compare(out, reference))
        if reconstruct:
            if audio_store is not None:
                audio_store[precision] = out["audio"]
            else:
                entry["audio"] = audio_scores(out["audio"], clips, reference["audio"], args.sampling_rate)
        print(f"  {name} {precision}: {json.dumps({k: v for k, v in entry.items() if k != 'seconds'})}", flush=True)
        save(name, results)
    return results


def table(results: dict) -> str:
    lines = []
    for model_name, model in results["models"].items():
        lines.append(f"\n{model_name} ({model['description']}), on {results['where']}:")
        header = ["precision", *[f"codes = fp32 ({b})" for b in BOTTLENECKS], "latent rel. error"]
        if model_name == "demo":
            header += ["SI-SDR dB", "mel dist.", "PESQ", "STOI", "SI-SDR vs fp32 dB"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for precision, entry in model.get("precisions", {}).items():
            if entry["status"] != "ok":
                lines.append(f"| {precision} | {entry['status']}: {entry['reason'][:120]} |")
                continue
            cells = [precision, *[f"{100 * entry['codes_agreement'][b]:.1f}%" for b in BOTTLENECKS]]
            cells.append(f"{entry['latent_relative_error']:.2e}")
            if model_name == "demo":
                audio = entry.get("audio", {})
                for metric, digits in zip(AUDIO_METRICS + ("si_sdr_vs_fp32",), (2, 3, 3, 3, 1)):
                    value = audio.get(metric)
                    cells.append("-" if value is None else f"{value:.{digits}f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def score_saved(args) -> dict:
    """Scores reconstructions saved on another machine (`--save-audio`) into that run's JSON."""
    if args.json is None or not args.json.exists():
        raise SystemExit("--score needs --json naming the JSON of the run that saved the audio (it is updated).")
    saved = torch.load(args.score)
    results = json.loads(args.json.read_text())
    demo = results["models"]["demo"]["precisions"]
    for precision, audio in saved["audio"].items():
        if demo.get(precision, {}).get("status") == "ok":
            demo[precision]["audio"] = audio_scores(audio, saved["inputs"], saved["audio"]["fp32"], saved["rate"])
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=PRECISIONS)
    parser.add_argument(
        "--random-configs",
        nargs="*",
        default=["tiny"],
        help="random-weight models to measure besides the demo model: tiny, paper or a config path",
    )
    parser.add_argument("--random-clips", default="4x4", help="BATCHxSECONDS of synthetic speech for those")
    parser.add_argument("--speech", type=Path, default=SPEECH, help="the held-out speech (made here on first use)")
    parser.add_argument("--save-audio", type=Path, help="save the reconstructions here instead of scoring them")
    parser.add_argument("--score", type=Path, help="score reconstructions saved by --save-audio, then exit")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--commit", help="git commit to record where the tree has no .git (the device copy)")
    args = parser.parse_args(argv)
    if args.precisions[0] != "fp32":
        parser.error("fp32 comes first: it is the reference")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.score:
        results = score_saved(args)
    else:
        results = measure(args)
    write_json(args.json, results)
    print(table(results))
    return results


def write_json(path: Path | None, results: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")


def measure(args) -> dict:
    device = torch.device(args.device)
    results = {
        "where": bench.where_label(device),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": bench.machine_info(device),
        "versions": bench.versions(args.commit),
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
        "precision_settings": bench.configure_precision(),
        "notes": [
            "reference: fp32 on the same device; int8 / fp8: torchao dynamic-activation quantization of the "
            "transformer projections, bf16 elsewhere; int8-static: compile_int8_static (static int8 of the "
            "LayerNorm-fed projections through oneDNN, bf16 autocast elsewhere), one codec per clip shape, "
            "calibrated on the other clips (leave-one-out), or on speech-like synthetic audio where all clips "
            "share a shape; codes agreement is per token (a training-FSQ token holds all "
            "six channels), latents are the encoder's pre-bottleneck output"
        ],
        "models": {},
    }
    with contextlib.suppress(ImportError):
        import torchao

        results["versions"]["torchao"] = torchao.__version__
    speech = heldout_speech(args.speech)
    args.sampling_rate = speech["sampling_rate"]
    audio_store = {} if args.save_audio else None
    inputs = [clip.float() for clip in speech["clips"]]

    def save(model_name: str, precisions: dict) -> None:
        results["models"][model_name]["precisions"] = precisions
        write_json(args.json, results)
        if audio_store is not None:
            torch.save({"audio": audio_store, "inputs": inputs, "rate": args.sampling_rate}, args.save_audio)

    demo = StableCodecModel.from_pretrained(default_model()).to(device).eval()
    print(f"demo model on {results['where']}:", flush=True)
    results["models"]["demo"] = {
        "description": f"the demo model, {len(speech['clips'])} held-out espeak-ng sentences",
        "clips": speech["labels"],
    }
    results["models"]["demo"]["precisions"] = measure_model("demo", demo, speech["clips"], args, audio_store, save)
    del demo
    batch, seconds = (float(value) for value in args.random_clips.split("x"))
    for config_name in args.random_configs:
        torch.manual_seed(0)
        with torch.device(device):
            model = StableCodecModel(bench.load_config(config_name)).eval()
        clips = list(
            speechlike_audio(int(batch), int(seconds * model.config.sampling_rate), 16000, device).cpu().split(1)
        )
        print(f"{config_name} (random weights):", flush=True)
        description = f"random weights, {int(batch)} synthetic clips of {seconds:g} s"
        results["models"][config_name] = {"description": description}
        results["models"][config_name]["precisions"] = measure_model(config_name, model, clips, args, None, save)
        del model
    return results


if __name__ == "__main__":
    main()
