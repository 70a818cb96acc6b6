#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before benchmarks/benchmark_codecs.py goes to the GPU machine, which has no
# internet and no stable-audio-tools: downloads the original Stable Codec's pure-Python wheels into .whl-bench/
# (git-ignored through .git/info/exclude; about 0.2 MB). Carry it (and the project's .whl/base) with the run:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/base/*.whl .whl-bench/*.whl && export PYTHONPATH=src:/tmp/site
# Installed with --no-deps on purpose: the autoencoder's import chain needs only these, torch, einops (in the GPU
# image) and placeholders for modules it imports but never calls (benchmarks/original_codec.py writes them).
set -euo pipefail
cd "$(dirname "$0")/.."

grep -qx '/.whl-bench/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null \
    || echo '/.whl-bench/' >> "$(git rev-parse --git-common-dir)/info/exclude"
rm -rf .whl-bench && mkdir -p .whl-bench
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl-bench \
    stable-audio-tools==0.0.17 stable-codec==0.1.2 alias-free-torch==0.0.6 einops-exts==0.0.4
ls .whl-bench && du -sh .whl-bench
