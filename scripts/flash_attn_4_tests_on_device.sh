#!/usr/bin/env bash
# The FlashAttention-4 GPU tests, after the last part of scripts/carry_flash_attn_4.sh was installed on the warm
# machine (`bash scripts/install_flash_attn_4.sh install .whl/fa4/part-N`; carry .whl/base with it). The bf16 parity
# tests run first, then the padded batch (variable-length kernel), which on 2026-12-02 ran for over 5 minutes without
# finishing: each test gets --timeout seconds (pytest-timeout is in the GPU image), whose traceback shows where it
# waited, and FA_LOG_LEVEL=1 logs FlashAttention-4's kernel compiles. Writes $OUT/flash_attn_4_tests.log.
#
#   bash scripts/flash_attn_4_tests_on_device.sh [--timeout 120]
set -uo pipefail
cd "$(dirname "$0")/.."
TIMEOUT=120
[ "${1:-}" = --timeout ] && TIMEOUT=$2
RESULTS=${OUT:-outputs/flash-attn-4-out}
mkdir -p "$RESULTS"
if ! python3 -c "import soundfile, rapidfuzz" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/base/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 FA_LOG_LEVEL=1
for selection in "tests/test_parity_with_original.py -k flash_attention_4" "tests/test_gpu.py -k flash_attention_4"; do
    # shellcheck disable=SC2086  # the selection is two words on purpose
    python3 -m pytest -v -p no:cacheprovider -m gpu -rs --timeout "$TIMEOUT" --durations=0 $selection 2>&1 \
        | tee -a "$RESULTS/flash_attn_4_tests.log" | grep -E "PASSED|FAILED|SKIPPED|ERROR|Timeout|passed|failed"
done
