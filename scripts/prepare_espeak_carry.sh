#!/usr/bin/env bash
# Run HERE (Debian bookworm, x86-64, with gcc): packs espeak-ng for the GPU machine, which has neither espeak-ng nor
# internet, into .whl/espeak/espeak-ng.tar.gz (git-ignored; 0.9 MB, carry .whl/espeak). The corpus is then synthesized
# ON the device (scripts/continue_demo_on_device.sh), where 16 cores make it in about a minute, instead of carrying
# the audio. A tarball, because the voice variants live in a folder named `!v` and executables need their mode bits.
#
#   bash scripts/prepare_espeak_carry.sh [DEB_FOLDER]
#
# DEB_FOLDER: where the .deb files are or go (default /tmp/esdeb). The binaries need glibc >= 2.34.
# The tarball holds espeak-ng/: espeak-ng (a wrapper: put the folder first on PATH), lib/ (the binary, libespeak-ng,
# libsonic, a stub libpcaudio), espeak-ng-data/ (the English dictionary, phoneme tables, accents, voice variants).
set -euo pipefail
cd "$(dirname "$0")/.."
DEBS=${1:-/tmp/esdeb}
mkdir -p "$DEBS"
if ! ls "$DEBS"/espeak-ng_*.deb "$DEBS"/libespeak-ng1_*.deb "$DEBS"/espeak-ng-data_*.deb "$DEBS"/libsonic0_*.deb \
    >/dev/null 2>&1; then
    (cd "$DEBS" && apt-get download espeak-ng libespeak-ng1 espeak-ng-data libsonic0)
fi
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
for deb in "$DEBS"/espeak-ng_*.deb "$DEBS"/libespeak-ng1_*.deb "$DEBS"/espeak-ng-data_*.deb "$DEBS"/libsonic0_*.deb; do
    dpkg-deb -x "$deb" "$ROOT"
done
LIB="$ROOT/usr/lib/x86_64-linux-gnu"
TARGET="$ROOT/espeak-ng"
mkdir -p "$TARGET/lib" "$TARGET/espeak-ng-data/lang"
cp "$ROOT/usr/bin/espeak-ng" "$TARGET/lib/espeak-ng"
cp -L "$LIB/libespeak-ng.so.1" "$LIB/libsonic.so.0" "$TARGET/lib/"
# The real libpcaudio.so.0 needs libpulse and libasound; --stdout never plays, so a stub with its symbols suffices.
gcc -O2 -shared -fPIC -Wall -Wextra -Werror -Wl,-soname,libpcaudio.so.0 -o "$TARGET/lib/libpcaudio.so.0" \
    scripts/espeak/pcaudio_stub.c
DATA="$LIB/espeak-ng-data"
cp "$DATA"/{phontab,phonindex,phondata,intonations,en_dict} "$TARGET/espeak-ng-data/"
cp -r "$DATA/lang/gmw" "$TARGET/espeak-ng-data/lang/"  # English accents (and a few other West Germanic languages)
mkdir -p "$TARGET/espeak-ng-data/voices"
cp -r "$DATA/voices/!v" "$TARGET/espeak-ng-data/voices/"  # the variants (+m3, +f2, +klatt, ...)
rm "$TARGET/espeak-ng-data/voices/!v/Mr serious"  # a space in a file name; no corpus uses it
cp scripts/espeak/espeak-ng "$TARGET/espeak-ng"
# It must run with nothing from this machine: an empty environment, only the carried folder.
env -i "$TARGET/espeak-ng" -v en-us+m3 -w "$ROOT/check.wav" "carried"
[ "$(head -c 4 "$ROOT/check.wav")" = RIFF ]
[[ "$(env -i "$TARGET/espeak-ng" --version)" == *"Data at: $(readlink -f "$TARGET")/espeak-ng-data"* ]]
[[ "$(env -i LD_LIBRARY_PATH="$TARGET/lib" ldd "$TARGET/lib/espeak-ng")" == *"libpcaudio.so.0 => $TARGET/lib/"* ]]
mkdir -p .whl/espeak
tar -C "$ROOT" -czf .whl/espeak/espeak-ng.tar.gz espeak-ng
du -sh .whl/espeak
