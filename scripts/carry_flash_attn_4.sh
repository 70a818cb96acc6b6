#!/usr/bin/env bash
# FlashAttention-4 (flash-attn-4, the CuTe-DSL kernels) for the GPU machine, which has no internet and takes at most
# 64 MiB per device call, working tree included. Run HERE: downloads the wheels (Python 3.12, x86-64, CUDA 13 libs),
# installs them into a folder as pip would there, packs that folder with xz (92 MB of wheels become ~67 MB; about 7
# minutes on 2 cores) and cuts it into parts (of PART_MB MiB, by default what a call has room for beside the tracked
# files) under .whl/fa4/part-N/ (git-ignored). It also puts soundfile and its two dependencies in .whl/soundfile/
# (the GPU tests import the trainer, which reads audio with it): carry that folder with the last part.
# To carry other folders beside each part (e.g. .whl/base, 6 MB), make smaller parts: PART_MB=17 gives four parts,
# which fit beside the ~42 MB tree and 7 MB of other carries (2026-12-02: four calls, then the GPU work).
#
# Then, on one warm machine, one device call per part, each started within ~30 s of the last (the machine's /tmp
# survives only while it stays warm):
#   carry [".whl/fa4/part-1"]  command: bash scripts/install_flash_attn_4.sh stash .whl/fa4/part-1; <other work>
#   ... the same for every part but the last ...
#   carry [".whl/fa4/part-N", ".whl/soundfile"]
#                              command: bash scripts/install_flash_attn_4.sh install .whl/fa4/part-N && <FA4 work>
# `install` joins the parts, unpacks them into /tmp/fa4site and makes the image's Python see that folder; then
# attn_implementation="flash_attention_4" works there (transformers >= 5.17 knows it).
set -euo pipefail
cd "$(dirname "$0")/.."
# The parts take what 64 MiB leaves beside the tracked files, less 2 MiB of margin and 2 MiB for .whl/soundfile.
tree_mib=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{print int($1 / 1048576) + 1}')
PART_MB=${PART_MB:-$((60 - tree_mib))}
echo "tracked files: ${tree_mib} MiB; parts of ${PART_MB} MiB"

PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$work/wheels" \
    flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 \
    quack-kernels==0.6.5 torch-c-dlpack-ext==0.1.5 cuda-pathfinder==1.9.1
# Installed here for that platform, so the GPU machine only unpacks (pip's --target layout, .pth files included).
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: "${PLATFORM[@]}" --target "$work/site" \
    "$work"/wheels/*.whl
rm -rf .whl/fa4 && mkdir -p .whl/fa4
tar -C "$work/site" --sort=name --owner=0 --group=0 -cf - . | xz -9e -T0 > .whl/fa4/site.tar.xz
split -b "${PART_MB}m" -d -a 1 .whl/fa4/site.tar.xz .whl/fa4/site.tar.xz.
rm .whl/fa4/site.tar.xz
index=1
for part in .whl/fa4/site.tar.xz.*; do
    mkdir -p ".whl/fa4/part-$index" && mv "$part" ".whl/fa4/part-$index/"
    index=$((index + 1))
done
rm -rf .whl/soundfile
python3 -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d .whl/soundfile \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
du -sh .whl/fa4/part-* .whl/soundfile
