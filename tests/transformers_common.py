"""transformers' common model and config tests, from the source distribution of the installed transformers release.

The wheel ships no tests, so the sdist is fetched once with pip into a cache (`$STABLE_CODEC_TEST_CACHE`, by default
`~/.cache/transformers-stable-codec`) and its `tests/` folder is imported from there; none of its code is copied into
this repository. The sdist leaves out three sub-packages that `test_modeling_common.py` and
`test_configuration_common.py` import; `transformers_common_standins/` supplies our own small versions (see each).
"""

import importlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import types

import transformers


STANDINS = pathlib.Path(__file__).resolve().parent / "transformers_common_standins"
CACHE = pathlib.Path(
    os.environ.get("STABLE_CODEC_TEST_CACHE", pathlib.Path.home() / ".cache" / "transformers-stable-codec")
)
PACKAGE = "transformers_common_tests"


def transformers_tests_folder(version: str = transformers.__version__) -> pathlib.Path:
    """The `tests/` folder of the transformers `version` sdist, downloaded and unpacked on first use."""
    folder = CACHE / f"transformers-{version}-tests"
    if (folder / "__init__.py").is_file():
        return folder
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"transformers=={version}",
                "--dest",
                download,
            ],
            check=True,
        )
        (archive,) = pathlib.Path(download).glob("transformers-*.tar.gz")
        prefix = f"transformers-{version}/tests/"
        unpacked = pathlib.Path(download) / "unpacked"
        with tarfile.open(archive) as sdist:
            members = [member for member in sdist.getmembers() if member.name.startswith(prefix) and member.isfile()]
            sdist.extractall(unpacked, members=members, filter="data")
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Unpacked beside the cache, then renamed: a run killed halfway leaves no folder that looks complete.
        staging = pathlib.Path(tempfile.mkdtemp(dir=folder.parent))
        # The sdist leaves out tests/__init__.py; pytest's import hook wants the folder to be a package.
        (unpacked / prefix / "__init__.py").touch()
        (unpacked / prefix).rename(staging / "tests")
        (staging / "tests").rename(folder)
        staging.rmdir()
    return folder


def import_transformers_tests():
    """(`test_modeling_common`, `test_configuration_common`) of the installed release, as modules of one package whose
    path is the sdist's `tests/` folder followed by the stand-ins."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(transformers_tests_folder()), str(STANDINS)]
        sys.modules[PACKAGE] = package
    return (
        importlib.import_module(f"{PACKAGE}.test_modeling_common"),
        importlib.import_module(f"{PACKAGE}.test_configuration_common"),
    )
