#!/usr/bin/env bash
# The demo model's second training run, on the GPU machine, in two calls on one warm machine: `start` synthesizes a
# larger espeak-ng corpus ON the device (88 speakers: English accents x voice variants; 8 more are held out for
# scripts/evaluate_demo.py), then continues the shipped demo model (weights and CTC head) with the discriminator on;
# `resume` continues that run exactly from its last checkpoint. Both export the EMA model, so a lost second call still
# leaves a model.
#
#   bash scripts/continue_demo_on_device.sh start  [--minutes 6] [--batch 64] [--sentences 8000] [--dry-run]
#   bash scripts/continue_demo_on_device.sh resume [--minutes 5] [--dry-run]
#
# Carry: .whl/base (the wheels the GPU image lacks, from scripts/prepare_device_carry.sh's list) and .whl/espeak
# (scripts/prepare_espeak_carry.sh). The corpus (outputs/demo_corpus_many) and the run (outputs/demo-run2) stay on
# the machine between calls; `resume` stops with status 2 if the machine was handed back in between.
# --dry-run rehearses the same path on CPU: the real demo model, a 40-sentence corpus, batches of 4.
#
# Writes to $OUT (else outputs/device-demo2-out): summary.json (validation of the whole run so far: step 0 of the
# first call, then the latest), training_curves.png, metrics.jsonl, train.log, corpus.json (speakers, sizes), and
# demo_model.tar.part-NN: the export (EMA model, CTC head, training config, validation history, provisional model
# card); reassemble with `cat demo_model.tar.part-* | tar -x` (gives export/).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-}
case "$MODE" in
    start | resume) shift ;;
    *) echo "usage: $0 start|resume [--minutes M] [--batch B] [--sentences N] [--dry-run]" >&2; exit 2 ;;
esac
MINUTES=6
BATCH=64
SENTENCES=8000
DRY_RUN=0
FIXED_AT_START=
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        --batch) BATCH=$2; FIXED_AT_START="--batch"; shift 2 ;;
        --sentences) SENTENCES=$2; FIXED_AT_START="--sentences"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        *) echo "unknown option: $1 (use --minutes M, --batch B, --sentences N, --dry-run)" >&2; exit 2 ;;
    esac
done
if [ "$MODE" = resume ] && [ -n "$FIXED_AT_START" ]; then
    echo "$FIXED_AT_START is fixed by 'start': 'resume' continues the same run" >&2
    exit 2
fi
RESULTS=${OUT:-outputs/device-demo2-out}
CORPUS=outputs/demo_corpus_many
RUN=outputs/demo-run2
DEMO=src/transformers_stable_codec/demo_model
WORKERS=$(nproc)
if [ "$DRY_RUN" = 1 ]; then
    CORPUS=outputs/dry_demo_corpus_many RUN=outputs/dry-demo-run2 SENTENCES=40 BATCH=4
fi
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
started=$(date +%s)

PYTHON=${PYTHON:-python3}
source scripts/carried_wheels.sh

if [ "$MODE" = start ]; then
    # Seed 0 and 3-7 words, as every demo corpus: the validation sentences come first, so the 64 that
    # scripts/evaluate_demo.py speaks are among them, and no training sentence repeats one.
    if [ ! -f "$CORPUS/corpus.json" ]; then
        if [ -f .whl/espeak/espeak-ng.tar.gz ]; then  # scripts/prepare_espeak_carry.sh
            rm -rf /tmp/espeak-ng && tar -C /tmp -xzf .whl/espeak/espeak-ng.tar.gz
            export PATH="/tmp/espeak-ng:$PATH"
        fi
        # A missing espeak-ng, or one this machine cannot run (it needs glibc >= 2.34), stops here, within seconds.
        if ! check=$(espeak-ng -v en-us --stdout "check" 2>&1 >/dev/null); then
            echo "espeak-ng does not run here (carry .whl/espeak from scripts/prepare_espeak_carry.sh): $check" >&2
            ldd --version 2>&1 | head -1 >&2
            exit 2
        fi
        echo "espeak-ng: $(command -v espeak-ng)"
        rm -rf "$CORPUS.partial"
        "$PYTHON" -m transformers_stable_codec.training.synthetic_corpus "$CORPUS.partial" --speakers many \
            --train "$SENTENCES" --validation 96 --format shards \
            --workers "$WORKERS" >/dev/null
        mv "$CORPUS.partial" "$CORPUS"
    fi
    echo "corpus ready after $(($(date +%s) - started)) s: $(du -sh "$CORPUS" | cut -f1)"
    rm -rf "$RUN" && mkdir -p "$RUN"
    echo "BATCH=$BATCH" >"$RUN/start_options"  # `resume` must rebuild the very same run
else
    if [ ! -f "$RUN/start_options" ] || ! ls -d "$RUN"/checkpoints/step_* >/dev/null 2>&1; then
        echo "no run to resume in $RUN (the machine was handed back after the start call?): run 'start' again" >&2
        exit 2
    fi
    # shellcheck source=/dev/null
    source "$RUN/start_options"
fi
"$PYTHON" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'GPUs', torch.cuda.device_count())"

ARGS=(
    --config configs/demo_small.yaml --output_dir "$RUN" --max_minutes "$MINUTES" --export "$RUN/export"
    --model "$DEMO" --set "model.proj_head_pretrained=$DEMO"
    --set "data.train.path=$CORPUS/train-*.tar" --set "data.validation.path=$CORPUS/validation-*.tar"
    --set "training.batch_size=$BATCH" --set "data.num_workers=$((WORKERS > 12 ? 12 : WORKERS))"
    # The pretrained generator already reconstructs: the discriminator trains from the first step and its
    # adversarial and feature-matching terms reach the generator after 400 steps, once it tells real from fake.
    --set training.loss_configs.discriminator.warmup_mode=adv
    --set training.loss_configs.discriminator.warmup_steps=400
)
DEVICE="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true) x 1"
if [ "$DRY_RUN" = 1 ]; then
    DEVICE="CPU (dry run)"
    ARGS+=(
        --set training.mixed_precision=no --set training.log_every=2 --set training.validate_every=6
        --set training.checkpoint_every=6 --set training.loss_configs.discriminator.warmup_steps=4
        --set data.validation_max_clips=4 --set data.num_workers=1 --set data.validation_batch_size=4
    )
fi
if [ "$MODE" = resume ]; then
    ARGS+=(--resume latest)
fi

set -o pipefail
"$PYTHON" -m transformers_stable_codec.training "${ARGS[@]}" 2>&1 | tee "$RESULTS/train.log"

echo "$MINUTES" >>"$RUN/minutes_per_call"
TOTAL_MINUTES=$(awk '{total += $1} END {print total}' "$RUN/minutes_per_call")
cp "$DEMO/preprocessor_config.json" "$RUN/export/"  # the trainer exports the model and head, not the extractor
"$PYTHON" scripts/report_training_run.py "$RUN" --plot "$RUN/training_curves.png" --summary "$RESULTS/summary.json" \
    --model_card "$RUN/export" --minutes "$TOTAL_MINUTES" --device "$DEVICE" --corpus "$CORPUS/corpus.json" \
    --continued_from docs/demo_training_summary.json --title "Stable Codec demo, continued: $DEVICE"
cp "$RUN/training_curves.png" "$RUN/metrics.jsonl" "$CORPUS/corpus.json" "$RESULTS/"
rm -f "$RESULTS"/demo_model.tar.part-*
tar -C "$RUN" -cf - export | split -b 15M -d - "$RESULTS/demo_model.tar.part-"
echo "call took $(($(date +%s) - started)) s"
ls -la "$RESULTS"
