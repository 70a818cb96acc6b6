#!/usr/bin/env bash
# fp8 on the GPU machine (issue 17): (a) the quality of every precision against fp32 there, (b) paper-scale encode +
# decode, ours fp8 against ours bf16 interleaved in one process (flex attention, CUDA graphs), 16 x 10 s then 1 x 10 s.
# Each part runs under its own time limit and writes its JSON and log to $OUT; a failed part does not stop the next.
# Carry .whl/base, .whl/torchao (torchao's wheel; both installed here into /tmp/site) and outputs/precision_quality
# (the held-out speech, made locally by benchmarks/precision_quality.py on first use). Usage, from the repository root:
#   scripts/precision_on_device.sh COMMIT [QUALITY_LIMIT_S] [SPEED_LIMIT_S]
# QUALITY_LIMIT_S=0 skips part (a). SCENARIOS (default "16x10s 1x10s"), DEVICE, CONFIG, ATTENTION, COMPILE and
# RANDOM_CONFIGS override the GPU settings (a CPU dry run uses DEVICE=cpu CONFIG=tiny ATTENTION=sdpa COMPILE=none
# RANDOM_CONFIGS=tiny).
set -u
: "${OUT:?set OUT to the folder that receives the results}"
COMMIT=${1:-unknown}
QUALITY_LIMIT_S=${2:-90}
SPEED_LIMIT_S=${3:-200}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-paper}
ATTENTION=${ATTENTION:-flex_attention}
COMPILE=${COMPILE:-reduce-overhead}
RANDOM_CONFIGS=${RANDOM_CONFIGS:-paper}
SCENARIOS=${SCENARIOS:-16x10s 1x10s}
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
source scripts/carried_wheels.sh
if ! "$PYTHON" -c "import torchao" 2>/dev/null; then
    if [ -d .whl/torchao ]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/torchao/*.whl
    else
        echo "warning: torchao is missing and .whl/torchao was not carried: the fp8 variant will fail" >&2
    fi
fi

if [ "$QUALITY_LIMIT_S" -gt 0 ]; then
    start=$(date +%s)
    timeout "$QUALITY_LIMIT_S" "$PYTHON" benchmarks/precision_quality.py --device "$DEVICE" --commit "$COMMIT" \
        --random-configs $RANDOM_CONFIGS --save-audio "$OUT/quality_audio.pt" --json "$OUT/quality.json" \
        >"$OUT/quality.log" 2>&1
    echo "quality: exit $? after $(($(date +%s) - start)) s" | tee -a "$OUT/status.txt"
    tail -n 12 "$OUT/quality.log"
fi

# The speed budget stops a scenario from starting when its compiles would not fit; the timeout (budget + 180 s, room
# for a compile that started just before the budget ran out) is the hard stop
# (the JSON is rewritten after every stage, so what ran is kept).
start=$(date +%s)
timeout "$((SPEED_LIMIT_S + 180))" "$PYTHON" benchmarks/precision_speed.py --device "$DEVICE" --config "$CONFIG" \
    --commit "$COMMIT" --attention "$ATTENTION" --variants "bf16:$COMPILE" "fp8:$COMPILE" \
    --scenarios $SCENARIOS --rounds 30 --warmup 3 --time-budget-s "$SPEED_LIMIT_S" --json "$OUT/speed.json" \
    >"$OUT/speed.log" 2>&1
echo "speed: exit $? after $(($(date +%s) - start)) s" | tee -a "$OUT/status.txt"
tail -n 8 "$OUT/speed.log"
