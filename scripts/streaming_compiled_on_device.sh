#!/usr/bin/env bash
# Streaming decode compiled with CUDA graphs against eager, on the GPU machine (issue #16): for the demo model and
# the paper-scale model (random weights, bf16), the compute of one steady-state `decode_stream` step for 1 and for
# 64 concurrent streams, eager and `compile_mode="reduce-overhead"` (each shape's compile timed apart), and the
# compiled stream of a clip against the eager one. Then the streaming GPU tests (every attention backend, CUDA
# graphs). About 4 minutes on an H200. Writes $OUT (else outputs/streaming-out)/streaming_cuda_compiled.json
# (keys demo and paper, the layout of benchmarks/results/streaming_*.json) and streaming_gpu_tests.txt.
#
#   bash scripts/streaming_compiled_on_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-outputs/streaming-out}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
source scripts/carried_wheels.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

json=$RESULTS/streaming_cuda_compiled.json
# Demo: 1-frame steps at K = 8 (the uncompiled GPU step is launch-bound: K hardly matters, the H200 table shows).
python3 benchmarks/streaming.py --device cuda --model demo --seconds 8 --lookaheads 8 --streams 1 64 \
    --compile-modes reduce-overhead --json "$json"
# Paper scale: the exact context (1326 frames) and 5-frame steps of the uncompiled table, K = 1.
python3 benchmarks/streaming.py --device cuda --model paper --seconds 8 --lookaheads 1 --step-frames 5 \
    --streams 1 64 --repeats 3 --dtype bf16 --compile-modes reduce-overhead --json "$json"

# Last, so that a machine without pytest (or a slow compile) costs the benchmark nothing.
if python3 -c "import pytest" 2>/dev/null; then
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k stream 2>&1 | tail -15 \
        | tee "$RESULTS/streaming_gpu_tests.txt" || true
else
    echo "pytest is not installed: GPU streaming tests not run" | tee "$RESULTS/streaming_gpu_tests.txt"
fi
