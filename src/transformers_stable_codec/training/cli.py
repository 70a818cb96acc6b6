"""`accelerate launch -m transformers_stable_codec.training --config CONFIG.yaml [options]`: finetune or train
Stable Codec with the CTC phoneme head. Also `python -m ...` for one process, or the `stable-codec-train` script."""

import argparse
import pathlib
import sys

from .config import ConfigError, load_config


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stable-codec-train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML or JSON training configuration (see docs/training.md)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a configuration value, e.g. --set training.max_steps=2000 (repeatable)",
    )
    parser.add_argument(
        "--model", help="initial weights (sets model.pretrained): a save_pretrained folder, Hub id or original layout"
    )
    parser.add_argument("--output_dir", help="sets training.output_dir")
    parser.add_argument(
        "--max_minutes", type=float, help="sets training.max_minutes: stop after this much wall-clock time"
    )
    parser.add_argument(
        "--resume", metavar="CHECKPOINT", help="'latest' (newest under output_dir) or a checkpoint folder"
    )
    parser.add_argument(
        "--export", metavar="FOLDER", help="where to save the final model (default: OUTPUT_DIR/export)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.model:
        overrides += [f"model.pretrained={args.model}", "model.config={}"]
    if args.output_dir:
        overrides.append(f"training.output_dir={args.output_dir}")
    if args.max_minutes is not None:
        overrides.append(f"training.max_minutes={args.max_minutes}")
    from .trainer import NonFiniteLossError, StableCodecTrainer

    try:
        config = load_config(args.config, overrides)
        trainer = StableCodecTrainer(config)
    except ConfigError as error:
        print(f"stable-codec-train: invalid configuration: {error}", file=sys.stderr)
        return 2
    if args.resume:
        print(f"resumed from {trainer.resume(args.resume)}")
    try:
        trainer.train()
    except NonFiniteLossError as error:
        trainer.end()
        print(f"stable-codec-train: {error}", file=sys.stderr)
        return 1
    export = pathlib.Path(args.export or pathlib.Path(config.training.output_dir) / "export")
    trainer.export(export)
    trainer.end()
    if trainer.accelerator.is_main_process:
        print(f"exported the {'EMA ' if config.training.use_ema else ''}model to {export}")
    return 0
