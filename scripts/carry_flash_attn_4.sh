#!/usr/bin/env bash
# FlashAttention-4 (flash-attn-4, the CuTe-DSL kernels) for the GPU machine, which has no internet and takes at most
# 64 MiB per device call, working tree included. Run HERE: downloads the wheels (Python 3.12, x86-64, CUDA 13 libs)
# and cuts them into parts (of PART_MB MiB, by default what a call has room for) under .whl/fa4/part-N/ (git-ignored).
#
# Then, on one warm machine, one device call per part, each started within ~30 s of the last (the machine's /tmp
# survives only while it stays warm):
#   carry [".whl/fa4/part-1"]  command: bash scripts/install_flash_attn_4.sh stash .whl/fa4/part-1; <other work>
#   ... the same for every part but the last ...
#   carry [".whl/fa4/part-N"]  command: bash scripts/install_flash_attn_4.sh install .whl/fa4/part-N && <FA4 work>
# `install` joins the parts, installs them into /tmp/fa4site and makes the image's Python see them; then
# attn_implementation="flash_attention_4" works there (transformers >= 5.17 knows it).
set -euo pipefail
cd "$(dirname "$0")/.."
# The tree travels with each part: the parts take what 64 MiB leaves beside the tracked files, less 2 MiB of margin.
tree_mib=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{print int($1 / 1048576) + 1}')
PART_MB=${PART_MB:-$((62 - tree_mib))}
echo "tracked files: ${tree_mib} MiB; parts of ${PART_MB} MiB"

download=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$download" \
    flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 \
    quack-kernels==0.6.5 torch-c-dlpack-ext==0.1.5 cuda-pathfinder==1.9.1

# One archive of all wheels, cut into parts; `install` concatenates them back.
rm -rf .whl/fa4 && mkdir -p .whl/fa4
tar -C "$download" -cf .whl/fa4/wheels.tar .
split -b "${PART_MB}m" -d -a 1 .whl/fa4/wheels.tar .whl/fa4/wheels.tar.
rm .whl/fa4/wheels.tar "$download"/*.whl && rmdir "$download"
index=1
for part in .whl/fa4/wheels.tar.*; do
    mkdir -p ".whl/fa4/part-$index" && mv "$part" ".whl/fa4/part-$index/"
    index=$((index + 1))
done
du -sh .whl/fa4/part-*
