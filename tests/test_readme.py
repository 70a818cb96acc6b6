"""Every Python block of the README runs as written on the demo model shipped in the package (issue #19)."""

import pathlib
import re

import numpy as np
import pytest

from transformers_stable_codec import command_support


REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def readme_python_blocks() -> list[str]:
    text = (REPOSITORY / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_readme_has_python_blocks():
    assert len(readme_python_blocks()) >= 2


@pytest.mark.slow
def test_the_readme_python_blocks_run_on_the_demo_model():
    # The names the README leaves to the reader: where the model is, and two clips of raw audio.
    generator = np.random.default_rng(0)
    namespace = {
        "path": str(command_support.DEFAULT_MODEL),
        "clip_44k_stereo": (0.1 * generator.standard_normal((2, 44100 * 2))).astype(np.float32),
        "clip_22k_mono": (0.1 * generator.standard_normal(22050)).astype(np.float32),
    }
    for index, block in enumerate(readme_python_blocks()):  # in order: later blocks use earlier names
        exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102  (our README)
    assert namespace["codes"].shape[:2] == (2, 2)
