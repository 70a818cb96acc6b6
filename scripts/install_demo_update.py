"""Installs the demo model of scripts/continue_demo_on_device.sh as the package's demo, here (CPU), from the files
its `resume` call (or, failing that, its `start` call) wrote to $OUT:

    python scripts/install_demo_update.py DEVICE_OUT_FOLDER [--clips 64]

1. reassembles `demo_model.tar.part-*` and checks the export (files, ≤ 25 MB, the parameter count);
2. evaluates the committed demo ("before", taken from git HEAD) and the new one ("after") with
   scripts/evaluate_demo.py -> docs/demo_evaluation.json (about 2 x 10 minutes on 2 CPU cores at 64 clips);
3. rewrites the model card with the run's validation and that evaluation (scripts/report_training_run.py);
4. replaces src/transformers_stable_codec/demo_model/ (keeping its preprocessor_config.json), writes
   docs/demo_training2_summary.json and docs/demo_training2_curves.png;
5. updates the test that pins the card's PER row, and prints what else quotes the old weights' figures.
"""

import argparse
import io
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile


REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO = REPO / "src" / "transformers_stable_codec" / "demo_model"
SHIPPED = (
    "config.json",
    "model.safetensors",
    "ctc_head.safetensors",
    "ctc_head_config.json",
    "training_config.json",
    "validation_history.json",
    "README.md",
)
# What quotes the demo's weights; the script updates the first, the rest needs the new figures by hand.
CARD_TEST = REPO / "tests" / "test_training.py"
BY_HAND = """
Places that quote the old demo weights (update with the figures above):
- README.md, the paragraph after the quick start ("Without `--model` the command line uses the demo model ...": how it
  was trained, PER and mel distance, and PESQ / STOI / SI-SDR on the README sentence).
- docs/cli.md, the paragraph "Without `--model` (or with `--model demo`) ..." (training, PESQ, STOI, SI-SDR, mel
  distance on the README sentence; "far from the input").
- docs/training.md, "The demo: proof that it learns": add the second run (corpus: 88 speakers, on-device synthesis,
  scripts/prepare_espeak_carry.sh; the two calls; its validation table and docs/demo_training2_curves.png; the held-out
  table of docs/demo_evaluation.json); "The discriminator ... did not switch on" then describes the first run only.
- docs/streaming.md, the demo-model tables (SI-SDR / mel of streaming against offline decode by lookahead) and
  docs/streaming.png, benchmarks/results/streaming_cpu.json: measured on the old weights; re-run
  `python benchmarks/streaming.py --device cpu --model demo` or mark them as the first demo's.
- configs/demo_small.yaml, first comment ("sized for ~6 minutes on one H100"): now also continued by
  scripts/continue_demo_on_device.sh.
- tests/test_training.py::test_the_shipped_demo_model_is_the_default_and_says_what_it_is: updated by this script (the
  card's PER row); its size (≤ 25 MiB) and parameter count (5-6M) checks still hold for the same architecture.
- tests/test_cli.py, test_cli_safety.py, test_readme.py: compare with the shipped weights at run time (no fixed
  figures): just run them.
"""


def reassemble(device_out: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    parts = sorted(device_out.glob("demo_model.tar.part-*"))
    if not parts:
        raise SystemExit(f"{device_out} holds no demo_model.tar.part-*")
    with tarfile.open(fileobj=io.BytesIO(b"".join(part.read_bytes() for part in parts))) as archive:
        archive.extractall(target, filter="data")
    export = target / "export"
    missing = [name for name in (*SHIPPED[:-1], "preprocessor_config.json") if not (export / name).is_file()]
    if missing:
        raise SystemExit(f"the export lacks {missing}")
    size = sum(path.stat().st_size for path in export.iterdir())
    if size > 25 * 2**20:
        raise SystemExit(f"the export is {size / 2**20:.1f} MiB: over the 25 MiB the package allows")
    return export


def committed_demo(target: pathlib.Path) -> pathlib.Path:
    """The demo model as git HEAD has it (the 'before' of the evaluation, whatever the working tree holds)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "HEAD", "src/transformers_stable_codec/demo_model"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src" / "transformers_stable_codec" / "demo_model"


def run(*command) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], check=True, cwd=REPO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device_out", type=pathlib.Path, help="the folder of the device call's $OUT files")
    parser.add_argument("--clips", type=int, default=64, help="held-out sentences per speaker group")
    args = parser.parse_args()
    summary = json.loads((args.device_out / "summary.json").read_text())
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        export = reassemble(args.device_out, folder)
        before = committed_demo(folder / "before")
        evaluation = REPO / "docs" / "demo_evaluation.json"
        run(
            sys.executable,
            "scripts/evaluate_demo.py",
            "--model",
            f"before={before}",
            "--model",
            f"after={export}",
            "--clips",
            args.clips,
            "--json",
            evaluation,
        )
        # The temporary folders mean nothing later: say what was measured.
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        report = json.loads(evaluation.read_text())
        report["models"]["before"]["folder"] = f"git {head.stdout.strip()}:src/transformers_stable_codec/demo_model"
        report["models"]["after"]["folder"] = f"the export of {args.device_out.name}, installed by this script"
        evaluation.write_text(json.dumps(report, indent=2) + "\n")
        run_dir = folder / "run"
        run_dir.mkdir()
        shutil.copy(args.device_out / "metrics.jsonl", run_dir)
        run(
            sys.executable,
            "scripts/report_training_run.py",
            run_dir,
            "--plot",
            "docs/demo_training2_curves.png",
            "--summary",
            "docs/demo_training2_summary.json",
            "--model_card",
            export,
            "--minutes",
            summary["minutes"],
            "--device",
            summary["device"],
            "--corpus",
            args.device_out / "corpus.json",
            "--continued_from",
            "docs/demo_training_summary.json",
            "--evaluation",
            evaluation,
            "--title",
            f"Stable Codec demo, continued: {summary['device']}",
        )
        for name in SHIPPED:
            shutil.copy(export / name, DEMO / name)
    card_row = "| phone error rate, held-out sentences (greedy CTC) |"
    first, last = summary["validation_first"]["val/per"], summary["validation_last"]["val/per"]
    text = CARD_TEST.read_text()
    old = f'    assert "{card_row} 119.8% | 24.2% |" in card\n'
    if old in text:
        CARD_TEST.write_text(text.replace(old, f'    assert "{card_row} {first:.1%} | {last:.1%} |" in card\n'))
    print(f"installed the new demo model into {DEMO.relative_to(REPO)}")
    print(BY_HAND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
