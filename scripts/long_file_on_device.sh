#!/usr/bin/env bash
# Peak memory of the command line on a 1-hour file, on the GPU machine (issue #19): encode, decode and reconstruct
# with the demo model, then encode and decode with a paper-scale model (random weights: memory and time depend on
# the size, not on the values), each in its own process, reporting wall time and peak RSS.
#
#   bash scripts/long_file_on_device.sh [--minutes 60]
#
# Needs no internet: the speech is a synthetic voiced signal when espeak-ng is absent. The metrics of reconstruct
# need pesq, pystoi and torchmetrics; without them that step reports "the metrics need ...". Writes $OUT (else
# outputs/long-file-out)/long_file_peak_rss.jsonl, one JSON object per command.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=60
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        *) echo "unknown option: $1 (use --minutes M)" >&2; exit 2 ;;
    esac
done
RESULTS=${OUT:-outputs/long-file-out}
WORK=$(mktemp -d /tmp/long_file.XXXXXX)
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
source scripts/carried_wheels.sh

python3 -c "from transformers_stable_codec import StableCodecConfig, StableCodecModel
StableCodecModel(StableCodecConfig()).save_pretrained('$WORK/paper_scale')"

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
report=$RESULTS/long_file_peak_rss.jsonl
: > "$report"
python3 scripts/long_file_peak_rss.py --minutes "$MINUTES" --workdir "$WORK/demo" \
    --commands encode,decode,reconstruct -- --device cuda | tee -a "$report" || true
python3 scripts/long_file_peak_rss.py --minutes "$MINUTES" --workdir "$WORK/paper" \
    --commands encode,decode -- --device cuda --model "$WORK/paper_scale" --dtype bfloat16 | tee -a "$report" || true
python3 -c "
import json, sys
for line in open(sys.argv[1]):
    row = json.loads(line)
    print(row['command'], ' '.join(row['arguments'][4:]), 'status', row['returncode'], row['seconds'], 's',
          row['peak_rss_mib'], 'MiB peak RSS')" "$report"
rm -rf "$WORK"
