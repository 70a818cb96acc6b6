#!/usr/bin/env bash
# The FlashAttention-4 GPU tests, after the last part of scripts/carry_flash_attn_4.sh was installed on the warm
# machine (`bash scripts/install_flash_attn_4.sh install .whl/fa4/part-N`; carry .whl/base with it). The bf16 parity
# tests run first, then the stream, then the padded batch (variable-length kernel), which once ran for over 5 minutes
# without finishing (in the next session it passed in 14 s): each test gets --timeout seconds (pytest-timeout is in
# the GPU image), whose traceback shows where it waited, and FA_LOG_LEVEL=1 logs FlashAttention-4's kernel compiles. Writes $OUT/flash_attn_4_tests.log.
#
#   bash scripts/flash_attn_4_tests_on_device.sh [--timeout 120]
set -uo pipefail
cd "$(dirname "$0")/.."
TIMEOUT=120
[ "${1:-}" = --timeout ] && TIMEOUT=$2
RESULTS=${OUT:-outputs/flash-attn-4-out}
mkdir -p "$RESULTS"
source scripts/carried_wheels.sh
export PYTHONUNBUFFERED=1 FA_LOG_LEVEL=1
# The padded batch last: should its variable-length kernel hang the GPU, `timeout` still ends the run.
for selection in "tests/test_parity_with_original.py -k flash_attention_4" \
    "tests/test_gpu.py::test_stream_equals_decode_on_gpu[flash_attention_4]" \
    "tests/test_gpu.py::test_flash_attention_padded_batch_equals_clips_alone_and_sdpa[flash_attention_4]"; do
    # shellcheck disable=SC2086  # a selection may be two words on purpose
    timeout "$((TIMEOUT + 60))" python3 -m pytest -v -p no:cacheprovider -m gpu -rs --timeout "$TIMEOUT" \
        --durations=0 $selection 2>&1 | tee -a "$RESULTS/flash_attn_4_tests.log" \
        | grep -E "PASSED|FAILED|SKIPPED|ERROR|Timeout|passed|failed|compil"
done
