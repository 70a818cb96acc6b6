#!/usr/bin/env bash
# The demo training on the GPU machine (which has no internet): trains configs/demo_small.yaml from scratch on the
# espeak-ng corpus for a fixed wall-clock budget, then reports.
#
#   bash scripts/train_demo_on_device.sh [--minutes 6] [--gpus 1] [--dry-run] [--summary-only]
#
# Needs, carried beside the repository: .whl/base (wheels the GPU image lacks) and outputs/demo_corpus/ (the corpus);
# scripts/prepare_device_carry.sh makes both on a machine with internet. --dry-run rehearses on CPU with a tiny model.
# --gpus N > 1 runs N processes (DDP) through accelerate launch, N times the batch: compare samples_per_second.
# --summary-only keeps summary.json and train.log alone in $OUT (throughput runs: several fit in one call's 8 files).
#
# Writes to $OUT (else outputs/device-demo-out): summary.json (validation before/after, losses, samples/s),
# training_curves.png, metrics.jsonl, train.log, and demo_model.tar.part-NN: the export (EMA model, CTC head, model
# card) with the TensorBoard logs; reassemble with `cat demo_model.tar.part-* | tar -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=6
GPUS=1
DRY_RUN=0
SUMMARY_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        --gpus) GPUS=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --summary-only) SUMMARY_ONLY=1; shift ;;
        *) echo "unknown option: $1 (use --minutes M, --gpus N, --dry-run, --summary-only)" >&2; exit 2 ;;
    esac
done
RESULTS=${OUT:-outputs/device-demo-out}
RUN=outputs/demo-run
mkdir -p "$RESULTS"
rm -rf "$RUN"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10

source scripts/carried_wheels.sh
if [ ! -f outputs/demo_corpus/corpus.json ]; then
    echo "outputs/demo_corpus is missing: run scripts/prepare_device_carry.sh and carry outputs/demo_corpus" >&2
    exit 2
fi
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'GPUs', torch.cuda.device_count())"

ARGS=(--config configs/demo_small.yaml --output_dir "$RUN" --max_minutes "$MINUTES" --export "$RUN/export")
DEVICE="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true) x $GPUS"
if [ "$DRY_RUN" = 1 ]; then  # CPU rehearsal of the same path with a tiny model
    DEVICE="CPU (dry run, tiny model)"
    ARGS+=(
        --set 'model.config={hidden_size: 64, head_dim: 32, channel_multipliers: [1, 2], strides: [1, 2], transformer_depths: [1, 1], sliding_window: [3, 4], ff_mult: 2}'
        --set model.proj_head_width=64 --set training.mixed_precision=no --set training.batch_size=4
        --set training.log_every=5 --set training.validate_every=40 --set training.checkpoint_every=40
        --set training.loss_configs.discriminator.warmup_steps=20 --set training.loss_configs.discriminator.config.filters=8
        --set data.validation_max_clips=8 --set data.num_workers=1
    )
fi
if [ "$GPUS" -gt 1 ]; then
    LAUNCH=(python3 -m accelerate.commands.launch --multi_gpu --num_processes "$GPUS" --num_machines 1
            --mixed_precision bf16 --dynamo_backend no -m transformers_stable_codec.training)
else
    LAUNCH=(python3 -m transformers_stable_codec.training)
fi

set -o pipefail
"${LAUNCH[@]}" "${ARGS[@]}" 2>&1 | tee "$RESULTS/train.log"

python3 scripts/report_training_run.py "$RUN" --plot "$RUN/training_curves.png" --summary "$RESULTS/summary.json" \
    --model_card "$RUN/export" --minutes "$MINUTES" --device "$DEVICE" --title "Stable Codec demo: $DEVICE, $MINUTES min"
if [ "$SUMMARY_ONLY" = 1 ]; then
    ls -la "$RESULTS"
    exit 0
fi
cp "$RUN/training_curves.png" "$RUN/metrics.jsonl" "$RESULTS/"
rm -f "$RESULTS"/demo_model.tar.part-*
tar -C "$RUN" -cf - export logs | split -b 15M -d - "$RESULTS/demo_model.tar.part-"
ls -la "$RESULTS"
