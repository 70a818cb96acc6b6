"""Held-out evaluation of demo models, as a user hears them: each clip goes through what `stable-codec reconstruct`
does (the feature extractor's loudness normalization, encode and decode at the bottleneck), and is scored against
the normalized input with the command line's metrics (SI-SDR, mel and STFT distance, wideband PESQ, STOI), plus the
phone error rate of the model's CTC head (greedy decoding of the pre-bottleneck latents).

The sets are made here with espeak-ng (it must be installed): the same held-out sentences (the first `--clips` of the
corpora's validation split, seed 0, which no training run saw) spoken by three groups of speakers, and the README's
sentence in espeak-ng's default voice:

- `demo8`: the first demo's 8 voices (both runs trained on them);
- `new_speakers`: the second run's 80 accent-and-variant speakers (only the second run heard them);
- `heldout_speakers`: 8 speakers whose voice variants no run ever heard;
- `readme`: `espeak-ng -w speech.wav "Stable Codec turns speech ..."`, as README.md synthesizes it.

    python scripts/evaluate_demo.py --model before=src/transformers_stable_codec/demo_model \
        --model after=outputs/new_demo/export --json outputs/demo_eval.json

Prints a table per set and writes the JSON that `scripts/report_training_run.py --evaluation` puts in the model card.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import soundfile
import torch


BOTTLENECK = "2x15625_700bps"  # the command line's default
README_SENTENCE = "Stable Codec turns speech into a few hundred bits per second and back."
SETS = {
    "demo8": ("first demo's 8 voices", "the 8 voices of the first run, which both runs trained on"),
    "new_speakers": (
        "second run's new speakers",
        "80 speakers (English accents x voice variants) that only the second run trained on",
    ),
    "heldout_speakers": ("held-out speakers", "8 speakers whose voice variants no run trained on"),
    "readme": ("README sentence", "`espeak-ng -w speech.wav` of README.md's sentence (default voice, 4.35 s)"),
}
METRICS = ("si_sdr", "mel_distance", "stft_distance", "wideband_pesq", "stoi", "per")


def make_sets(folder: pathlib.Path, clips: int, workers: int) -> dict[str, list[tuple[pathlib.Path, str]]]:
    """(16 kHz WAV, text) per clip of each set; the corpus shards are unpacked to WAV so that each clip goes through
    the command line's own reading path."""
    from transformers_stable_codec.training.data import ShardSource
    from transformers_stable_codec.training.synthetic_corpus import VOICES, build_corpus, many_speakers

    trained, heldout = many_speakers()
    speakers = {"demo8": list(VOICES), "new_speakers": trained[len(VOICES) :], "heldout_speakers": heldout}
    sets = {}
    for name, voices in speakers.items():
        # train=0: the validation sentences are the first ones the generator draws, as in every corpus of seed 0.
        build_corpus(folder / name, train=0, validation=clips, formats=("shards",), voices=voices, workers=workers)
        source = ShardSource(str(folder / name / "validation-*.tar"))
        sets[name] = []
        for index in range(len(source)):
            clip = source.read(index)
            path = folder / name / f"{index:04d}.wav"
            soundfile.write(path, clip.audio, clip.sampling_rate, subtype="PCM_16")
            words = clip.transcript["transcript"]
            sets[name].append((path, " ".join(word["word"] for word in words)))
    readme = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(readme), README_SENTENCE], check=True, capture_output=True)
    sets["readme"] = [(readme, README_SENTENCE)]
    return sets


def evaluate_model(location: str, sets: dict) -> tuple[dict, float]:
    """Mean metrics per set (PER pooled over the set's phonemes), and the bitrate."""
    from transformers_stable_codec import cli
    from transformers_stable_codec.training.heads import StableCodecCTCHead
    from transformers_stable_codec.training.metrics import greedy_ctc_decode, phone_errors
    from transformers_stable_codec.training.phonemes import BLANK_INDEX, Phonemizer

    options = argparse.Namespace(device="cpu", dtype="float32", attn_implementation="sdpa", chunk_length_s=None)
    codec = cli.Codec(location, options)
    head = StableCodecCTCHead.from_pretrained(codec.location).eval()
    phonemizer = Phonemizer()
    results, started = {}, time.monotonic()
    for name, clips in sets.items():
        rows, errors, total = [], 0, 0
        for path, text in clips:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row, _ = cli.reconstruct(codec, path, BOTTLENECK)
            audio, rate = cli.read_audio(path)
            with torch.inference_mode():
                features = codec.extractor(audio, sampling_rate=rate, return_tensors="pt")
                output = codec.model.encode(features["input_values"], padding_mask=features["padding_mask"])
                logits = head(output.latents)
                frames = output.audio_codes_mask.sum(dim=-1)
                prediction = greedy_ctc_decode(logits.float(), frames, BLANK_INDEX)
            clip_errors, clip_total = phone_errors(prediction, [phonemizer.encode(text)])
            errors, total = errors + clip_errors, total + clip_total
            rows.append(row)
        results[name] = {metric: float(np.nanmean([row[metric] for row in rows])) for metric in METRICS[:-1]}
        results[name]["per"] = errors / max(total, 1)
        results[name]["clips"] = len(rows)
        print(f"{location}: {name} done ({len(rows)} clips, {time.monotonic() - started:.0f} s)", flush=True)
    return results, codec.bitrate(BOTTLENECK)


def print_tables(report: dict) -> None:
    models = list(report["models"])
    for name, spec in report["sets"].items():
        print(f"\n{spec['title']} ({report['results'][name][models[0]]['clips']} clips)")
        print(f"| metric | {' | '.join(models)} |")
        print("|---" * (len(models) + 1) + "|")
        for metric in METRICS:
            values = [report["results"][name][model][metric] for model in models]
            pattern = "{:.1%}" if metric == "per" else "{:.3f}"
            print(f"| {metric} | " + " | ".join(pattern.format(value) for value in values) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=FOLDER",
        help="a model folder with its CTC head (repeatable): e.g. before=src/transformers_stable_codec/demo_model",
    )
    parser.add_argument("--clips", type=int, default=64, help="held-out sentences per speaker group")
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng processes at once")
    parser.add_argument("--json", type=pathlib.Path, required=True, help="where to write the results")
    args = parser.parse_args(argv)
    models = {}
    for item in args.model:
        name, separator, folder = item.partition("=")
        if not separator or not name or not pathlib.Path(folder, "model.safetensors").is_file():
            parser.error(f"--model takes NAME=FOLDER with a model.safetensors in FOLDER, got {item!r}")
        models[name] = folder
    if args.clips < 1:
        parser.error("--clips must be at least 1")

    from transformers_stable_codec.command_support import weights_sha256

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        sets = make_sets(pathlib.Path(folder), args.clips, args.workers)
        report = {
            "bottleneck": BOTTLENECK,
            "sets": {name: {"title": title, "description": text} for name, (title, text) in SETS.items()},
            "models": {name: {"folder": folder, "sha256": weights_sha256(folder)} for name, folder in models.items()},
            "results": {name: {} for name in SETS},
        }
        for model, location in models.items():
            results, report["bits_per_second"] = evaluate_model(location, sets)
            for name, values in results.items():
                report["results"][name][model] = values
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
