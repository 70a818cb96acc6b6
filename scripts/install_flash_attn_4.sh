#!/usr/bin/env bash
# On the GPU machine (see scripts/carry_flash_attn_4.sh):
#   install_flash_attn_4.sh stash PART_FOLDER    keep a carried part in /tmp/fa4parts until the last one arrives
#   install_flash_attn_4.sh install PART_FOLDER  add the last part, join them, install the wheels into /tmp/fa4site
set -euo pipefail
action=$1 part_folder=$2
mkdir -p /tmp/fa4parts
cp "$part_folder"/wheels.tar.* /tmp/fa4parts/
[ "$action" = stash ] && { ls -l /tmp/fa4parts; exit 0; }
[ "$action" = install ] || { echo "usage: $0 stash|install PART_FOLDER" >&2; exit 2; }
mkdir -p /tmp/fa4wheels
cat /tmp/fa4parts/wheels.tar.* | tar -C /tmp/fa4wheels -xf -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fa4site \
    /tmp/fa4wheels/*.whl
# The CuTe DSL finds its packages through a .pth file, which PYTHONPATH does not read; transformers looks the
# flash-attn-4 distribution up when it is imported. A .pth in the image's site-packages adds /tmp/fa4site as a site.
site_packages=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import site; site.addsitedir('/tmp/fa4site')" > "$site_packages/flash_attn_4_carried.pth"
python3 -c "import flash_attn.cute, transformers.utils as u; print('flash_attention_4 available:', u.is_flash_attn_4_available())"
