"""Summarizes a training run from its `metrics.jsonl`: loss-curve plot, `summary.json`, and (with --model_card) a
model card in the export folder stating what the model is and what it measured.

    python scripts/report_training_run.py RUN_DIR --plot curves.png --summary summary.json [--model_card EXPORT]
"""

import argparse
import json
import pathlib
import statistics
import textwrap


def read_metrics(path: pathlib.Path) -> tuple[list[dict], list[dict]]:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [entry for entry in entries if any(key.startswith("train/") for key in entry)]
    validation = [entry for entry in entries if any(key.startswith("val/") for key in entry)]
    return train, validation


def summarize(run: pathlib.Path, train: list[dict], validation: list[dict]) -> dict:
    def first_and_last(name):
        points = [entry[name] for entry in train if name in entry]
        return {"first": points[0], "last": points[-1]} if points else None

    speeds = [entry["train/samples_per_second"] for entry in train if "train/samples_per_second" in entry]
    summary = {
        "steps": train[-1]["step"] if train else 0,
        "train": {
            name: first_and_last(f"train/{name}")
            for name in ("mrstft_loss", "mrmel_loss", "ctc_loss", "loss")
            if first_and_last(f"train/{name}")
        },
        "validation_first": validation[0] if validation else None,
        "validation_last": validation[-1] if validation else None,
        # The first log interval includes start-up (workers, kernels): the median of the rest is the rate.
        "samples_per_second_median": statistics.median(speeds[1:] or speeds) if speeds else None,
        "skipped_clips": max((entry.get("data/skipped_clips", 0) for entry in train), default=0),
    }
    return summary


def plot(train: list[dict], validation: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, label in (("train/mrstft_loss", "multi-resolution STFT"), ("train/mrmel_loss", "multi-resolution mel")):
        points = [(entry["step"], entry[name]) for entry in train if name in entry]
        if points:
            axes[0].plot(*zip(*points), label=label)
    for name, label in (("val/stft", "validation STFT distance"), ("val/mel", "validation mel distance")):
        points = [(entry["step"], entry[name]) for entry in validation if name in entry]
        if points:
            axes[0].plot(*zip(*points), "o--", label=label)
    axes[0].set(title="reconstruction", xlabel="step", ylabel="loss")
    points = [(entry["step"], entry["train/ctc_loss"]) for entry in train if "train/ctc_loss" in entry]
    if points:
        axes[1].plot(*zip(*points), label="train CTC loss")
    points = [(entry["step"], entry["val/ctc_loss"]) for entry in validation if "val/ctc_loss" in entry]
    if points:
        axes[1].plot(*zip(*points), "o--", label="validation CTC loss")
    axes[1].set(title="CTC head", xlabel="step", ylabel="loss")
    points = [(entry["step"], 100 * entry["val/per"]) for entry in validation if "val/per" in entry]
    if points:
        axes[2].plot(*zip(*points), "o-", color="C3", label="held-out sentences")
        axes[2].set_ylim(0, max(105, max(value for _, value in points) + 5))
    axes[2].set(title="phone error rate (greedy CTC)", xlabel="step", ylabel="PER (%)")
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


MODEL_CARD = """---
library_name: transformers
license: apache-2.0
tags: [audio, speech, codec, stable-codec, demo]
---

# Stable Codec demo model (synthetic speech, CTC phoneme head)

{intro}

## What it measures
{evaluation}
Validation during training, on {validation_clips} held-out sentences (new sequences of the training words, in the
training voices; whole clips, the training-time FSQ):

| | {before_label} | after training |
|---|---|---|
| phone error rate, held-out sentences (greedy CTC) | {per_before:.1%} | {per_after:.1%} |
| multi-resolution STFT distance | {stft_before:.3f} | {stft_after:.3f} |
| mel distance | {mel_before:.3f} | {mel_after:.3f} |
| SI-SDR (dB) | {sisdr_before:.2f} | {sisdr_after:.2f} |

Weights are the EMA of training (decay min(0.9999, 1 - (1 + n)^-0.75)). Throughput: {speed:.0f} clips of 2 s per
second.

## Files

- `config.json`, `model.safetensors`: a `StableCodecModel` (`AutoModel.from_pretrained(folder)` after
  `import transformers_stable_codec`). `stable-codec` names it `demo` in codes files, with the sha256 of
  `model.safetensors`.
- `preprocessor_config.json`: its `StableCodecFeatureExtractor` (`AutoFeatureExtractor.from_pretrained(folder)`):
  16 kHz, hop 640, loudness normalized to -20 LUFS.
- `ctc_head.safetensors`, `ctc_head_config.json`: the CTC head (`StableCodecCTCHead.from_pretrained(folder)`):
  81 outputs over the phoneme inventory of docs/training.md, blank 80.
- `training_config.json`, `validation_history.json`: how it was trained and what validation measured.

{trained_with}
"""

INTRO = (
    "**A demonstration, not a speech codec for real use.** This small Stable Codec ({parameters:,} parameters, 25 Hz "
    "latents, 6-dimensional FSQ) {story} It shows that the whole pipeline runs (feature extractor, encode, decode, "
    "the command line, the trainer) and that training learns. It has never heard a human voice. Do not judge Stable "
    "Codec by it; real use loads a trained checkpoint such as `stabilityai/stable-codec-speech-16k`."
)
SCRATCH_STORY = (
    "was trained from scratch for {minutes:.1f} minutes ({steps} optimizer steps) on {device}, on a synthetic corpus: "
    "390 English words spoken one by one by espeak-ng ({voices} voices) and joined into random sentences."
)
CONTINUED_STORY = (
    "was trained in two runs on synthetic corpora of 390 English words spoken one by one by espeak-ng and joined "
    "into random sentences: from scratch for {first_minutes:.1f} minutes ({first_steps} optimizer steps) on "
    "{first_device} with {first_voices} voices, reconstruction and CTC losses only; then continued for {minutes:.1f} "
    "minutes ({steps} optimizer steps, generator and discriminator alternating) on {device} with {voices} speakers "
    "(espeak-ng's English accents crossed with its voice variants, each with its own rate and pitch) and "
    "{sentences:,} training sentences."
)

# The table `scripts/evaluate_demo.py` measures (what `stable-codec reconstruct` gives: loudness-normalized input,
# bottleneck 2x15625_700bps), in the card when its JSON is given.
EVALUATION_ROWS = (
    ("si_sdr", "SI-SDR (dB)", "{:.1f}"),
    ("mel_distance", "mel distance", "{:.2f}"),
    ("stft_distance", "STFT distance", "{:.2f}"),
    ("wideband_pesq", "wideband PESQ", "{:.2f}"),
    ("stoi", "STOI", "{:.2f}"),
    ("per", "phone error rate (greedy CTC)", "{:.1%}"),
)


def evaluation_section(evaluation: dict, model: str) -> str:
    """The README sentence and the held-out sets for one model of an `evaluate_demo.py` JSON, as markdown."""
    sets = evaluation["sets"]
    names = [name for name in sets if model in evaluation["results"][name]]
    header = " | ".join(sets[name]["title"] for name in names)
    clips = evaluation["results"][names[0]][model]["clips"]
    lines = [
        "",
        textwrap.fill(
            f"With `stable-codec reconstruct` (bottleneck `{evaluation['bottleneck']}`, "
            f"{evaluation['bits_per_second']:.0f} bits/s; metrics against the loudness-normalized input; "
            f"`scripts/evaluate_demo.py`), on the same {clips} held-out sentences spoken by three groups of speakers:",
            width=116,
        ),
        "",
        f"| | {header} |",
        "|---" * (len(names) + 1) + "|",
    ]
    for key, label, pattern in EVALUATION_ROWS:
        cells = []
        for name in names:
            value = evaluation["results"][name][model].get(key)
            cells.append("-" if value is None else pattern.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"- {sets[name]['title']}: {sets[name]['description']}" for name in names)
    lines.append("")
    return "\n".join(lines) + "\n"


def write_model_card(
    folder: pathlib.Path,
    summary: dict,
    minutes: float,
    device: str,
    corpus: dict | None = None,
    previous: dict | None = None,
    evaluation: dict | None = None,
    evaluation_model: str = "after",
) -> None:
    """`corpus`: the corpus.json of the run's data; `previous`: the summary of the run this one continued (None: it
    trained from scratch); `evaluation`: an `evaluate_demo.py` JSON, whose `evaluation_model` column is this model."""
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as weights:
        parameters = sum(_numel(weights.get_slice(name).get_shape()) for name in weights.keys())
    first, last = summary["validation_first"], summary["validation_last"]
    voices = len(corpus["voices"]) if corpus else 8
    facts = {"minutes": minutes, "steps": summary["steps"], "device": device, "voices": voices}
    if previous is None:
        story = SCRATCH_STORY.format(**facts)
        before_label, script = "before training", "`scripts/train_demo_on_device.sh` (configs/demo_small.yaml)"
    else:
        story = CONTINUED_STORY.format(
            **facts,
            first_minutes=previous["minutes"],
            first_steps=previous["steps"],
            first_device=previous["device"].removesuffix(" x 1"),
            first_voices=8,
            sentences=corpus["splits"]["train"]["clips"] if corpus else 0,
        )
        before_label = "start of the second run"
        script = (
            "`scripts/train_demo_on_device.sh`, then `scripts/continue_demo_on_device.sh` (configs/demo_small.yaml)"
        )
    validation_clips = corpus["splits"]["validation"]["clips"] if corpus else 64
    text = MODEL_CARD.format(
        intro=textwrap.fill(INTRO.format(parameters=parameters, story=story), width=116, break_on_hyphens=False),
        evaluation=evaluation_section(evaluation, evaluation_model) if evaluation else "",
        validation_clips=validation_clips,
        before_label=before_label,
        per_before=first["val/per"],
        per_after=last["val/per"],
        stft_before=first["val/stft"],
        stft_after=last["val/stft"],
        mel_before=first["val/mel"],
        mel_after=last["val/mel"],
        sisdr_before=first["val/sisdr"],
        sisdr_after=last["val/sisdr"],
        speed=summary["samples_per_second_median"] or 0.0,
        trained_with=textwrap.fill(f"Trained with {script}; see docs/training.md.", width=116),
    )
    (folder / "README.md").write_text(text)


def _read_json(path: pathlib.Path | None):
    return json.loads(path.read_text()) if path else None


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=pathlib.Path, help="the training output_dir (holds metrics.jsonl)")
    parser.add_argument("--plot", type=pathlib.Path, required=True)
    parser.add_argument("--summary", type=pathlib.Path, required=True)
    parser.add_argument("--model_card", type=pathlib.Path, help="export folder to write README.md into")
    parser.add_argument("--minutes", type=float, default=0.0, help="training wall-clock minutes, for the card")
    parser.add_argument("--device", default="an unnamed device", help="what it was trained on, for the card")
    parser.add_argument("--title", default="Stable Codec demo training")
    parser.add_argument("--corpus", type=pathlib.Path, help="the corpus.json of the training data, for the card")
    parser.add_argument(
        "--continued_from", type=pathlib.Path, help="summary.json of the run this one continued, for the card"
    )
    parser.add_argument(
        "--evaluation", type=pathlib.Path, help="scripts/evaluate_demo.py's JSON: its 'after' model goes in the card"
    )
    args = parser.parse_args()
    train, validation = read_metrics(args.run / "metrics.jsonl")
    summary = summarize(args.run, train, validation)
    summary["device"], summary["minutes"] = args.device, args.minutes
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    plot(train, validation, args.plot, args.title)
    if args.model_card:
        write_model_card(
            args.model_card,
            summary,
            args.minutes,
            args.device,
            corpus=_read_json(args.corpus),
            previous=_read_json(args.continued_from),
            evaluation=_read_json(args.evaluation),
        )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
