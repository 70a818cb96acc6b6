"""What the `stable-codec` commands (`cli.py`) and the corpus tokenizer (`tokenize.py`) share: the options' choices
and exit codes, where a model comes from (the demo model, Hub ids offline), the hash that names its weights, atomic
writes, and reading audio files without missing a truncated one."""

import hashlib
import json
import os
import pathlib
import socket
import struct
import tempfile
import threading
from urllib.parse import urlparse

import numpy as np
import soundfile
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

from .configuration_stable_codec import POSTHOC_BOTTLENECK_PRESETS


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")
BOTTLENECKS = (*POSTHOC_BOTTLENECK_PRESETS, "none")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_4")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# A small model trained here on synthetic espeak-ng speech (its model card gives its metrics): it shows the whole
# pipeline working, but it has never heard a human voice. Real use passes --model. Codes files name it "demo" rather
# than by its path, which differs from one installation to the next.
DEFAULT_MODEL = pathlib.Path(__file__).resolve().parent / "demo_model"
DEMO_NAME = "demo"
HUB_PROBE_TIMEOUT_S = 3.0


class CliError(Exception):
    """A problem that stops the whole command (bad inputs, a model that cannot be loaded): status 2."""


class FileFailure(Exception):
    """A problem with one file of a batch: it is reported, counted, and the batch goes on."""


def default_model() -> str:
    if not DEFAULT_MODEL.is_dir():
        raise CliError("no demo model in this installation: pass --model (a Hub id or a local folder).")
    return str(DEFAULT_MODEL)


def resolve_model(name: str) -> str:
    """Where to load the model a command line or codes file names from."""
    if name == DEMO_NAME:
        return default_model()
    path = pathlib.Path(name)
    # Codes files of earlier versions named the demo model by its absolute path inside some installation.
    if path.is_absolute() and not path.exists() and path.parts[-2:] == ("transformers_stable_codec", "demo_model"):
        return default_model()
    return name


def looks_like_a_path(name: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else must be a local folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub opens within `timeout` (name lookup included: it runs in a thread)."""
    endpoint = urlparse(hub_constants.ENDPOINT)
    address = (endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80))
    reached = []

    def probe():
        try:
            socket.create_connection(address, timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached)


def hub_load_options(location: str) -> dict:
    """`local_files_only=True` when a Hub id is asked for and the Hub cannot be reached: huggingface_hub would retry
    for minutes before failing."""
    if os.path.isdir(location):
        return {}
    if looks_like_a_path(location):
        raise CliError(f"cannot load the model {location!r}: no such folder.")
    if hub_constants.HF_HUB_OFFLINE:
        return {"local_files_only": True}
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return {}  # the Hub may be reachable through the proxy only: let huggingface_hub try
    if hub_reachable():
        return {}
    return {"local_files_only": True}


def weight_files(location: str) -> list[pathlib.Path]:
    """The files holding the model's weights, in a local folder or in the Hub cache (after loading); [] if unknown."""

    def find(name):
        if os.path.isdir(location):
            path = pathlib.Path(location) / name
            return path if path.is_file() else None
        cached = try_to_load_from_cache(location, name)
        return pathlib.Path(cached) if isinstance(cached, str) else None

    for name in ("model.safetensors", "pytorch_model.bin", "model.ckpt"):
        if (path := find(name)) is not None:
            return [path]
    index = find("model.safetensors.index.json")
    if index is not None:
        shards = [find(name) for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        if all(shards):
            return shards
    return []


def weights_sha256(location: str) -> str | None:
    """sha256 of the weight files' bytes (shards in name order): names the weights whatever their location."""
    files = weight_files(location)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def write_atomically(target: pathlib.Path, write) -> None:
    """`write(temporary_path)` then rename onto `target`: a crash never leaves a half-written file under the name."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(handle)
    try:
        write(pathlib.Path(temporary))
        umask = os.umask(0)  # mkstemp makes the file private; an output gets the permissions of any new file
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def wav_declared_frames(path: pathlib.Path) -> int | None:
    """The frame count a RIFF WAV header declares (data chunk size / block align), or None if not a plain WAV or
    streamed (size 0 or 0xFFFFFFFF). libsndfile itself reports only the frames present, so truncation goes unseen."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) != b"RIFF" or (handle.read(4), handle.read(4))[1] != b"WAVE":
                return None
            block_align = None
            while len(header := handle.read(8)) == 8:
                name, size = header[:4], struct.unpack("<I", header[4:])[0]
                if name == b"fmt ":
                    block_align = struct.unpack("<H", handle.read(16)[12:14])[0]
                    handle.seek(size - 16 + (size & 1), os.SEEK_CUR)
                elif name == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    handle.seek(size + (size & 1), os.SEEK_CUR)
    except (OSError, struct.error):
        return None
    return None


def read_audio(path: pathlib.Path) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 and the sampling rate; a truncated file is refused."""
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        declared = wav_declared_frames(path) or soundfile.info(path).frames
    except (RuntimeError, TypeError) as error:  # soundfile's LibsndfileError is a RuntimeError
        raise FileFailure(f"{path}: cannot read it as audio ({error}).") from None
    if audio.shape[0] == 0:
        raise FileFailure(f"{path}: the file holds no samples.")
    if audio.shape[0] < declared:
        raise FileFailure(
            f"{path}: truncated or corrupt: its header declares {declared} frames ({declared / rate:.2f} s) but only "
            f"{audio.shape[0]} ({audio.shape[0] / rate:.2f} s) can be read. Repair or re-export it."
        )
    if not np.isfinite(audio).all():
        raise FileFailure(f"{path}: the audio holds NaN or infinite samples.")
    return audio.T, rate


def bottleneck_argument(name: str) -> str | None:
    return None if name == "none" else name
