#!/usr/bin/env bash
# On the GPU machine (see scripts/carry_flash_attn_4.sh):
#   install_flash_attn_4.sh stash PART_FOLDER    keep a carried part in /tmp/fa4parts until the last one arrives
#   install_flash_attn_4.sh install PART_FOLDER  add the last part, join and unpack them into /tmp/fa4site, and
#                                                install .whl/soundfile's wheels into /tmp/site when carried
set -euo pipefail
action=$1 part_folder=$2
[ "$action" = stash ] || [ "$action" = install ] || { echo "usage: $0 stash|install PART_FOLDER" >&2; exit 2; }
mkdir -p /tmp/fa4parts
cp "$part_folder"/site.tar.xz.* /tmp/fa4parts/
[ "$action" = stash ] && { ls -l /tmp/fa4parts; exit 0; }
rm -rf /tmp/fa4site && mkdir -p /tmp/fa4site
# Python's own lzma: the image need not have xz.
cat /tmp/fa4parts/site.tar.xz.* | python3 -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/fa4site', filter='data')"
if [ -d .whl/soundfile ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/soundfile/*.whl
fi
# The CuTe DSL finds its packages through a .pth file, which PYTHONPATH does not read; transformers looks the
# flash-attn-4 distribution up when it is imported. A .pth in the image's site-packages adds /tmp/fa4site as a site.
site_packages=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import site; site.addsitedir('/tmp/fa4site')" > "$site_packages/flash_attn_4_carried.pth"
python3 -c "import flash_attn.cute, transformers.utils as u; print('flash_attention_4 available:', u.is_flash_attn_4_available())"
