"""`stable-codec`: tokenize speech files, decode tokens, and measure the codec from the shell.

    stable-codec encode speech.wav more/ --output-dir codes/         # audio files -> <name>.codes.safetensors
    stable-codec decode codes/ --output-dir decoded/                 # codes files -> <name>.wav (16 kHz)
    stable-codec reconstruct speech.wav --output-dir out/            # encode + decode; prints bitrate and metrics
    stable-codec evaluate corpus/ --csv metrics.csv --json metrics.json
    stable-codec tokenize corpus/ --output-dir tokens/               # a corpus -> Parquet shards (docs/tokenize.md)

Audio inputs are files or folders (searched recursively for .wav, .flac, .ogg, .mp3, .aiff, .au), at any sampling rate
and channel count: the feature extractor resamples, mixes down and normalizes loudness as the original does. A codes
file is a safetensors file holding `audio_codes` (int64, tokens per frame x frames) and, as metadata, the format, the
model and the sha256 of its weights, the bottleneck, the sampling rate, the hop length and the number of samples.

Inputs are never overwritten. An output that exists already is skipped and reported (so running a batch again
resumes it) unless --overwrite is given; outputs are written to a temporary file and renamed when complete. A file that
fails is reported with its reason and the batch goes on. Exit status: 0 every file done or skipped, 1 some files
failed, 2 the command could not run (bad options, missing inputs, a model that cannot be loaded), 130 interrupted.
See docs/cli.md.
"""

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import pathlib
import sys
import warnings
from collections import Counter

import numpy as np
import soundfile
import torch
from huggingface_hub import constants as hub_constants
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .command_support import (
    ATTENTION,
    AUDIO_SUFFIXES,
    BOTTLENECKS,
    DEMO_NAME,
    DTYPES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    FileFailure,
    bottleneck_argument,
    hub_load_options,
    read_audio,
    resolve_model,
    weights_sha256,
    write_atomically,
)
from .feature_extraction_stable_codec import StableCodecFeatureExtractor
from .metrics import METRIC_NAMES
from .modeling_stable_codec import StableCodecModel


CODES_FORMAT = "stable-codec-codes/1"
CODES_SUFFIX = ".codes.safetensors"
# Files longer than this are coded in chunks of this length (with the receptive field as context) unless
# --chunk-length-s says otherwise: one call over an hour of audio needs gigabytes of activations. Models whose
# receptive field is long get chunks of twice their context (214 s for the paper-scale model) so that the context
# costs at most half again the compute.
AUTO_CHUNK_S = 60.0
# The metrics score files longer than one window window by window (PESQ crashes on long input, STOI and the
# spectral distances need memory in proportion to the length) and report the length-weighted mean of the windows.
METRIC_WINDOW_S = 30.0
# Shorter clips get no metrics: STOI needs 30 overlapping frames of 25.6 ms (0.4 s) of speech.
MIN_METRIC_S = 0.5


# Loading -----------------------------------------------------------------------------------------------------------


def load_codec(location: str, device: str, dtype: torch.dtype, attn_implementation: str):
    """The model and its feature extractor, from a `save_pretrained` folder or Hub id, or an original-layout folder
    (`model_config.json` + `model.safetensors` or `model.ckpt`)."""
    options = hub_load_options(location)
    try:
        model = StableCodecModel.from_pretrained(
            location, dtype=dtype, attn_implementation=attn_implementation, **options
        )
        model = model.to(device).eval()
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        if options.get("local_files_only") and hub_constants.HF_HUB_OFFLINE:
            raise CliError(
                f"cannot load the model {location!r}: HF_HUB_OFFLINE is set, so only the local Hugging Face cache is "
                "used, and the model is not in it. Unset HF_HUB_OFFLINE where there is a network, or pass --model a "
                "local folder."
            ) from None
        if options.get("local_files_only"):
            raise CliError(
                f"cannot load the model {location!r}: the Hugging Face Hub cannot be reached (no network?) and the "
                "model is not in the local cache. Download it where there is a network (the cache can be copied), "
                "or pass --model a local folder. HF_HUB_OFFLINE=1 skips the network check and uses the cache only."
            ) from None
        raise CliError(f"cannot load the model {location!r}: {error}") from None
    try:
        extractor = StableCodecFeatureExtractor.from_pretrained(location, **options)
    except OSError:  # no preprocessor_config.json: the defaults, sized to the model
        extractor = StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length)
    if (extractor.sampling_rate, extractor.hop_length) != (model.sampling_rate, model.hop_length):
        raise CliError(
            f"{location}: the feature extractor ({extractor.sampling_rate} Hz, hop {extractor.hop_length}) does not "
            f"fit the model ({model.sampling_rate} Hz, hop {model.hop_length})."
        )
    return model, extractor


# Files --------------------------------------------------------------------------------------------------------------


def collect(
    paths: list[str], suffixes: tuple[str, ...], kind: str, exclude: pathlib.Path | None = None
) -> list[pathlib.Path]:
    """Files named on the command line, and the matching files under folders named there, in a stable order. Files
    under `exclude` (the output folder, when it lies inside an input folder) are left out: they are earlier outputs."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for name in paths:
        path = pathlib.Path(name)
        if path.is_dir():
            skip = exclude if exclude is not None and exclude != path.resolve() else None
            matches = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.name.lower().endswith(suffixes)
                and not (skip is not None and p.resolve().is_relative_to(skip))
            )
            if not matches:
                raise CliError(f"{path}: the folder holds no {kind} ({', '.join(suffixes)}).")
            found.extend(matches)
        elif path.is_file():
            found.append(path)
        else:
            raise CliError(f"{path}: no such file or folder.")
    return found


def output_paths(inputs: list[pathlib.Path], output_dir: pathlib.Path, strip: str, suffix: str) -> list[pathlib.Path]:
    outputs = [
        output_dir / (path.name[: -len(strip)] if strip and path.name.endswith(strip) else path.stem)
        for path in inputs
    ]
    outputs = [path.with_name(path.name + suffix) for path in outputs]
    seen = {}
    for source, target in zip(inputs, outputs):
        if target in seen:
            raise CliError(f"{seen[target]} and {source} would both be written to {target}: rename one.")
        seen[target] = source
    if output_dir.exists() and not output_dir.is_dir():
        raise CliError(f"{output_dir}: the output folder is a file.")
    output_dir.mkdir(parents=True, exist_ok=True)
    return outputs


def is_one_of(path: pathlib.Path, others: list[pathlib.Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == other.resolve() for other in others)


def check_target(target: pathlib.Path, inputs: list[pathlib.Path], overwrite: bool) -> str | None:
    """Why `target` must not be written (FileFailure), or a skip message; None when it may be written."""
    if is_one_of(target, inputs):
        raise FileFailure(f"{target}: is an input of this command, which is never overwritten: choose another -o.")
    if target.exists() and not overwrite:
        return f"{target} exists (--overwrite replaces it)"
    return None


def write_codes(path: pathlib.Path, codes: torch.Tensor, metadata: dict) -> None:
    tensors = {"audio_codes": codes.to(torch.int64).cpu().contiguous()}
    strings = {key: str(value) for key, value in metadata.items() if value is not None}
    write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=strings))


def positive_integer(path: pathlib.Path, metadata: dict, key: str) -> int:
    value = metadata[key]
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0 or str(number) != value.strip():
        raise FileFailure(f"{path}: the metadata field {key!r} must be a positive integer, got {value!r}.")
    return number


def read_codes(path: pathlib.Path) -> tuple[torch.Tensor, dict]:
    """The codes and checked metadata (sampling_rate, hop_length and num_samples as int)."""
    try:
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CODES_FORMAT:
                raise FileFailure(
                    f"{path}: not a Stable Codec codes file (format {metadata.get('format')!r}, expected "
                    f"{CODES_FORMAT!r})."
                )
            if "audio_codes" not in handle.keys():  # noqa: SIM118  (safe_open is no container)
                raise FileFailure(f"{path}: the codes file has no 'audio_codes' tensor.")
            codes = handle.get_tensor("audio_codes")
    except (SafetensorError, OSError) as error:
        raise FileFailure(f"{path}: cannot read it as a codes file ({error}).") from None
    missing = {"model", "bottleneck", "sampling_rate", "hop_length", "num_samples"} - set(metadata)
    if missing:
        raise FileFailure(f"{path}: the codes file lacks {', '.join(sorted(missing))} in its metadata.")
    for key in ("sampling_rate", "hop_length", "num_samples"):
        metadata[key] = positive_integer(path, metadata, key)
    if metadata["bottleneck"] not in BOTTLENECKS:
        raise FileFailure(
            f"{path}: the metadata field 'bottleneck' holds an unknown bottleneck {metadata['bottleneck']!r} "
            f"(known: {', '.join(BOTTLENECKS)})."
        )
    if codes.dim() != 2:
        raise FileFailure(f"{path}: audio_codes must be (tokens per frame, frames), got shape {tuple(codes.shape)}.")
    frames = -(-metadata["num_samples"] // metadata["hop_length"])
    if codes.shape[-1] != frames:
        raise FileFailure(
            f"{path}: {codes.shape[-1]} frames of codes for {metadata['num_samples']} samples (expected {frames}); "
            "the metadata field 'num_samples' or the codes are wrong."
        )
    return codes, metadata


# Encoding and decoding ----------------------------------------------------------------------------------------------


class Codec:
    """A loaded model and feature extractor, with the device, dtype and chunking options of the command."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name  # as the codes files record it: "demo", a Hub id, or a folder as given
        self.location = resolve_model(name)
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.extractor = load_codec(
            self.location, self.device, DTYPES[args.dtype], args.attn_implementation
        )
        self.sha256 = weights_sha256(self.location)
        self.chunk_length_s = args.chunk_length_s
        context = max(sum(self.model.encoder_receptive_field), sum(self.model.decoder_receptive_field))
        self.auto_chunk_s = max(AUTO_CHUNK_S, 2 * context / self.model.frame_rate)

    def chunking(self, num_samples: int) -> float | None:
        """Seconds per chunk for a signal of this length: the option (0: never), or chunks for long signals."""
        if self.chunk_length_s is None:
            return self.auto_chunk_s if num_samples > self.auto_chunk_s * self.model.sampling_rate else None
        return self.chunk_length_s or None

    @torch.inference_mode()
    def encode(self, path: pathlib.Path, bottleneck: str | None):
        """Codes (tokens per frame, frames), the model input (normalized mono at the model's rate), the file's rate."""
        audio, rate = read_audio(path)
        try:
            features = self.extractor(audio, sampling_rate=rate, return_tensors="pt", device=self.device)
            del audio
            num_samples = int(features["padding_mask"].sum())
            encoded = self.model.encode(
                input_values=features["input_values"].to(self.device, self.model.dtype),
                padding_mask=features["padding_mask"].to(self.device),
                posthoc_bottleneck=bottleneck,
                chunk_length_s=self.chunking(num_samples),
            )
        except ValueError as error:
            raise FileFailure(f"{path}: {error}") from None
        return encoded.audio_codes[0], features["input_values"][0, 0, :num_samples].cpu().numpy(), rate

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, bottleneck: str | None, num_samples: int) -> np.ndarray:
        audio = self.model.decode(
            audio_codes=codes[None].to(self.device),
            posthoc_bottleneck=bottleneck,
            chunk_length_s=self.chunking(num_samples),
        ).audio_values
        return audio[0, 0, :num_samples].float().cpu().numpy()

    def bitrate(self, bottleneck: str | None) -> float:
        return self.model.bits_per_second(bottleneck)


def open_codec(args) -> Codec:
    return Codec(args.model or DEMO_NAME, args)


def write_audio(path: pathlib.Path, audio: np.ndarray, rate: int) -> None:
    # 32-bit float keeps the decoder's output as it is: 16-bit PCM would clip it silently above full scale.
    write_atomically(path, lambda temporary: soundfile.write(temporary, audio, rate, subtype="FLOAT", format="WAV"))


def warn(message: str) -> None:
    """Warnings and errors go to standard error (results to standard output), above the progress bar."""
    tqdm.write(message, file=sys.stderr)


# Batches ------------------------------------------------------------------------------------------------------------


class Batch:
    """Runs one job per file: each outcome is reported as it happens and counted; a failure does not stop the rest."""

    def __init__(self, command: str):
        self.command = command
        self.counts = Counter()
        self.failures = []

    def run(self, items, job, on_row=None) -> list[dict]:
        """`job(item)` returns a row dict (status "ok" or "skipped") or raises FileFailure; rows are returned and
        handed to `on_row` as they complete."""
        rows = []
        for item in tqdm(items, desc=self.command, unit="file", file=sys.stderr):
            source = item[0] if isinstance(item, tuple) else item
            try:
                row = job(item)
            except FileFailure as error:
                row = {"file": str(source), "status": "error", "message": str(error)}
            except Exception as error:  # noqa: BLE001  (a bug or an unforeseen input: still only this file's failure)
                row = {"file": str(source), "status": "error", "message": f"{source}: {type(error).__name__}: {error}"}
            if row["status"] == "error":
                self.failures.append(row["message"])
                warn(f"error: {row['message']}")
            elif row["status"] == "skipped":
                warn(f"skipped: {row['message']}")
            self.counts[row["status"]] += 1
            rows.append(row)
            if on_row is not None:
                on_row(row)
        return rows

    def summary(self) -> str:
        parts = [f"{self.counts['ok']} done"]
        if self.counts["skipped"]:
            parts.append(f"{self.counts['skipped']} skipped (output exists; --overwrite replaces it)")
        if self.counts["error"]:
            parts.append(f"{self.counts['error']} failed")
        return f"{self.command}: " + ", ".join(parts)

    def finish(self) -> int:
        if self.failures:
            print("failed:\n" + "\n".join(f"  {message}" for message in self.failures), file=sys.stderr)
        print(self.summary(), file=sys.stderr)
        return EXIT_FAILED if self.failures else EXIT_OK


def skipped(source: pathlib.Path, message: str) -> dict:
    return {"file": str(source), "status": "skipped", "message": message}


def command_encode(args) -> int:
    output_dir = pathlib.Path(args.output_dir)
    inputs = collect(args.inputs, AUDIO_SUFFIXES, "audio files", exclude=output_dir)
    outputs = output_paths(inputs, output_dir, "", CODES_SUFFIX)
    codec, bottleneck = open_codec(args), bottleneck_argument(args.bottleneck)

    def job(item):
        source, target = item
        if (reason := check_target(target, inputs, args.overwrite)) is not None:
            return skipped(source, reason)
        codes, model_input, source_rate = codec.encode(source, bottleneck)
        metadata = {
            "format": CODES_FORMAT,
            "model": codec.name,
            "model_sha256": codec.sha256,
            "bottleneck": args.bottleneck,
            "sampling_rate": codec.model.sampling_rate,
            "hop_length": codec.model.hop_length,
            "num_samples": len(model_input),
            "source": source.name,
            "source_sampling_rate": source_rate,
        }
        write_codes(target, codes, metadata)
        tqdm.write(f"{source} -> {target}  {tuple(codes.shape)} tokens, {codec.bitrate(bottleneck):.1f} bits/s")
        return {"file": str(source), "status": "ok"}

    batch = Batch("encode")
    batch.run(list(zip(inputs, outputs)), job)
    return batch.finish()


class Decoder:
    """The models the codes files name, loaded once each, and the check that the weights are the ones encoded with."""

    def __init__(self, args):
        self.args = args
        self.codecs = {}

    def codec_for(self, source: pathlib.Path, metadata: dict) -> Codec:
        name = self.args.model or metadata["model"]
        if name not in self.codecs:
            try:
                self.codecs[name] = Codec(name, self.args)
            except CliError as error:
                self.codecs[name] = FileFailure(f"{source}: {error}" + ("" if self.args.model else " (pass --model)"))
        codec = self.codecs[name]
        if isinstance(codec, FileFailure):
            raise codec
        recorded = metadata.get("model_sha256")
        if recorded is None:
            warn(
                f"warning: {source} records no model_sha256 (written by an older stable-codec): cannot check that "
                f"{name!r} is the model it was encoded with."
            )
        elif codec.sha256 is None:
            warn(f"warning: {source}: cannot find the weight files of {name!r} to check them against the codes.")
        elif recorded != codec.sha256:
            message = (
                f"{source} was encoded with {metadata['model']!r} (weights sha256 {recorded[:12]}…), but {name!r} "
                f"has other weights (sha256 {codec.sha256[:12]}…): the audio would be wrong"
            )
            if not self.args.allow_other_weights:
                raise FileFailure(f"{message}. Pass --model the right model, or --allow-other-weights to decode it.")
            warn(f"warning: {message}; decoding anyway (--allow-other-weights).")
        return codec


def command_decode(args) -> int:
    to_stdout = args.stream and args.output_dir == "-"
    output_dir = None if to_stdout else pathlib.Path(args.output_dir)
    inputs = collect(args.inputs, (CODES_SUFFIX,), "codes files", exclude=output_dir)
    outputs = [None] * len(inputs) if to_stdout else output_paths(inputs, output_dir, CODES_SUFFIX, ".wav")
    decoder = Decoder(args)

    def job(item):
        source, target = item
        if target is not None and (reason := check_target(target, inputs, args.overwrite)) is not None:
            return skipped(source, reason)
        codes, metadata = read_codes(source)
        codec = decoder.codec_for(source, metadata)
        model = codec.model
        if (metadata["sampling_rate"], metadata["hop_length"]) != (model.sampling_rate, model.hop_length):
            raise FileFailure(
                f"{source}: the codes are for {metadata['sampling_rate']} Hz with hop {metadata['hop_length']}, the "
                f"model {codec.name!r} works at {model.sampling_rate} Hz with hop {model.hop_length}."
            )
        if args.stream:
            stream_audio(
                codec,
                codes,
                bottleneck_argument(metadata["bottleneck"]),
                metadata["num_samples"],
                source,
                target,
                args,
            )
            return {"file": str(source), "status": "ok"}
        try:
            audio = codec.decode(codes, bottleneck_argument(metadata["bottleneck"]), metadata["num_samples"])
        except ValueError as error:
            raise FileFailure(f"{source}: the codes do not fit the model {codec.name!r}: {error}") from None
        write_audio(target, audio, model.sampling_rate)
        tqdm.write(f"{source} -> {target}  {metadata['num_samples'] / model.sampling_rate:.2f} s")
        return {"file": str(source), "status": "ok"}

    batch = Batch("decode")
    batch.run(list(zip(inputs, outputs)), job)
    return batch.finish()


@torch.inference_mode()
def stream_audio(codec, codes, bottleneck, num_samples: int, source: pathlib.Path, target, args) -> None:
    """`decode --stream`: the codes handed to `decode_stream` frame by frame, as a speech LM emits them, and each
    chunk of audio written as it comes: raw PCM s16le to stdout for no `target`, else into a WAV file that grows in
    place (libsndfile rewrites its header with the final length at close; not atomic, by design)."""
    model = codec.model
    chunks = codes[None].to(codec.device).split(1, dim=-1)
    stream = model.decode_stream(chunks, posthoc_bottleneck=bottleneck, lookahead_frames=args.lookahead_frames)
    written = 0
    with contextlib.ExitStack() as stack:
        if target is not None:
            sink = stack.enter_context(soundfile.SoundFile(target, "w", model.sampling_rate, 1, subtype="FLOAT"))
        try:
            for audio in stream:
                audio = audio[0, 0, : num_samples - written].float().cpu().numpy()
                written += len(audio)
                if target is None:
                    pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
                    sys.stdout.buffer.write(pcm.tobytes())
                    sys.stdout.buffer.flush()
                else:
                    sink.write(audio)
                    sink.flush()
        except ValueError as error:
            raise FileFailure(f"{source}: the codes do not fit the model {codec.name!r}: {error}") from None
    seconds = num_samples / model.sampling_rate
    tqdm.write(f"{source} -> {target or 'stdout (s16le)'}  {seconds:.2f} s, streamed", file=sys.stderr)


# Metrics ------------------------------------------------------------------------------------------------------------


def require_metrics() -> None:
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
        import torchmetrics  # noqa: F401
    except ImportError as error:
        raise CliError(f"the metrics need {error.name}: pip install 'transformers-stable-codec[metrics]'.") from None


def metric_windows(num_samples: int, rate: int) -> list[slice]:
    """The whole signal up to METRIC_WINDOW_S; beyond, the fewest windows of at most METRIC_WINDOW_S, of equal
    length (so none is a short remainder)."""
    count = max(1, math.ceil(num_samples / (METRIC_WINDOW_S * rate)))
    bounds = np.linspace(0, num_samples, count + 1).round().astype(int)
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def score(reference: np.ndarray, reconstruction: np.ndarray, rate: int, source: pathlib.Path) -> tuple[dict, str]:
    """The table's metrics (length-weighted means over the windows), and a note on what could not be scored."""
    from .metrics.functional import SCORERS

    seconds = len(reference) / rate
    if seconds < MIN_METRIC_S:
        note = f"too short for the metrics ({seconds:.3f} s; they need at least {MIN_METRIC_S} s): none computed"
        warn(f"warning: {source}: {note}")
        return {name: math.nan for name in SCORERS}, note
    windows = metric_windows(len(reference), rate)
    scores, notes = {}, []
    for name, scorer in SCORERS.items():
        values, weights, reasons = [], [], []
        for window in windows:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pystoi warns on silent windows; the mean covers what scored
                try:
                    values.append(scorer(reconstruction[window], reference[window], rate))
                    weights.append(window.stop - window.start)
                except ValueError as error:
                    reasons.append(str(error))
        scores[name] = float(np.average(values, weights=weights)) if values else math.nan
        if reasons:
            where = "" if len(windows) == 1 else f" in {len(reasons)} of {len(windows)} windows"
            notes.append(f"no {name}{where}: {reasons[0]}")
    for note in notes:
        warn(f"warning: {source}: {note}")
    return scores, "; ".join(notes)


def reconstruct(codec: Codec, source: pathlib.Path, bottleneck: str | None) -> tuple[dict, np.ndarray]:
    """Encodes and decodes one file; the metrics compare the decoded audio with the model input (the file resampled,
    mixed down and loudness-normalized), which is what the codec is asked to reproduce."""
    codes, model_input, _ = codec.encode(source, bottleneck)
    decoded = codec.decode(codes, bottleneck, len(model_input))
    rate = codec.model.sampling_rate
    scores, note = score(model_input, decoded, rate, source)
    row = {
        "file": str(source),
        "status": "ok",
        "message": note,
        "seconds": len(model_input) / rate,
        "bits_per_second": codec.bitrate(bottleneck),
        **scores,
    }
    return row, decoded


def format_scores(row: dict) -> str:
    return "  ".join(f"{name} {row[name]:.3f}" for name in METRIC_NAMES)


def command_reconstruct(args) -> int:
    require_metrics()
    output_dir = pathlib.Path(args.output_dir)
    inputs = collect(args.inputs, AUDIO_SUFFIXES, "audio files", exclude=output_dir)
    outputs = output_paths(inputs, output_dir, "", ".wav")
    codec, bottleneck = open_codec(args), bottleneck_argument(args.bottleneck)

    def job(item):
        source, target = item
        if (reason := check_target(target, inputs, args.overwrite)) is not None:
            return skipped(source, reason)
        row, decoded = reconstruct(codec, source, bottleneck)
        write_audio(target, decoded, codec.model.sampling_rate)
        tqdm.write(
            f"{source} -> {target}  {row['seconds']:.2f} s, {args.bottleneck} at {row['bits_per_second']:.1f} bits/s\n"
            f"  {format_scores(row)}"
        )
        return row

    batch = Batch("reconstruct")
    batch.run(list(zip(inputs, outputs)), job)
    return batch.finish()


CSV_FIELDS = ["file", "status", "message", "seconds", "bits_per_second", *METRIC_NAMES]


class RowLog:
    """The evaluate CSV, one row appended and flushed per file under `<csv>.partial`, renamed to `<csv>` when the
    command ends (completed or interrupted): a crash leaves the finished rows in the .partial file."""

    def __init__(self, path: pathlib.Path | None):
        self.path, self.handle = path, None
        if path is not None:
            self.partial = path.with_name(path.name + ".partial")
            self.handle = open(self.partial, "w", newline="")  # noqa: SIM115  (open across calls, closed in close)
            self.writer = csv.DictWriter(self.handle, fieldnames=CSV_FIELDS)
            self.writer.writeheader()
            self.handle.flush()

    def append(self, row: dict) -> None:
        if self.handle is not None:
            cells = _nan_to_none({key: row.get(key) for key in CSV_FIELDS})
            self.writer.writerow({key: "" if value is None else value for key, value in cells.items()})
            self.handle.flush()
            os.fsync(self.handle.fileno())

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            os.replace(self.partial, self.path)
            self.handle = None


def check_report_path(name: str | None, inputs: list[pathlib.Path], overwrite: bool) -> pathlib.Path | None:
    if name is None:
        return None
    path = pathlib.Path(name)
    if is_one_of(path, inputs):
        raise CliError(f"{path}: is an input of this command, which is never overwritten.")
    if path.exists() and not overwrite:
        raise CliError(f"{path} exists: pass --overwrite to replace it, or name another file.")
    if not path.parent.is_dir():
        raise CliError(f"{path}: no folder {path.parent} to write it in.")
    return path


def command_evaluate(args) -> int:
    require_metrics()
    inputs = collect(args.inputs, AUDIO_SUFFIXES, "audio files")
    csv_path = check_report_path(args.csv, inputs, args.overwrite)
    json_path = check_report_path(args.json, inputs, args.overwrite)
    if csv_path is not None and csv_path == json_path:
        raise CliError("--csv and --json name the same file.")
    codec, bottleneck = open_codec(args), bottleneck_argument(args.bottleneck)
    batch, log, rows = Batch("evaluate"), RowLog(csv_path), []

    def job(source):
        row = reconstruct(codec, source, bottleneck)[0]
        tqdm.write(f"{source}  {row['seconds']:.2f} s  {format_scores(row)}")
        return row

    complete = False
    try:
        batch.run(inputs, job, on_row=lambda row: (rows.append(row), log.append(row)))
        complete = True
    finally:  # also on Ctrl-C: what is done is kept
        log.close()
        scored = [row for row in rows if row["status"] == "ok"]
        mean = {
            name: float(np.nanmean([row[name] for row in scored])) if scored else math.nan for name in METRIC_NAMES
        }
        if json_path is not None:
            summary = {
                "model": codec.name,
                "model_sha256": codec.sha256,
                "bottleneck": args.bottleneck,
                "bits_per_second": codec.bitrate(bottleneck),
                "complete": complete,
                "counts": {"ok": batch.counts["ok"], "error": batch.counts["error"], "total": len(inputs)},
                "files": rows,
                "mean": mean,
            }
            # NaN (a metric that could not score a file) is written as null, which JSON has.
            text = json.dumps(_nan_to_none(summary), indent=2) + "\n"
            write_atomically(json_path, lambda temporary: temporary.write_text(text))
    print_table(rows, mean)
    print(f"model {codec.name}, bottleneck {args.bottleneck}: {codec.bitrate(bottleneck):.1f} bits/s")
    return batch.finish()


def print_table(rows: list[dict], mean: dict) -> None:
    width = max(len(row["file"]) for row in rows + [{"file": "mean"}])
    print(f"{'file':<{width}}  {'seconds':>8}  " + "  ".join(f"{name:>13}" for name in METRIC_NAMES))
    scored = [row for row in rows if row["status"] == "ok"]
    seconds = float(np.mean([row["seconds"] for row in scored])) if scored else math.nan
    for row in rows + [{"file": "mean", "status": "ok", "seconds": seconds, **mean}]:
        if row["status"] != "ok":
            print(f"{row['file']:<{width}}  {row['status']}: {row['message']}")
            continue
        print(
            f"{row['file']:<{width}}  {row['seconds']:>8.2f}  " + "  ".join(f"{row[n]:>13.4f}" for n in METRIC_NAMES)
        )


def _nan_to_none(value):
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


# Arguments ----------------------------------------------------------------------------------------------------------


def chunk_length(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stable-codec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name, run, help, inputs, model_default, output=None, bottleneck=True):
        command = commands.add_parser(name, help=help, description=help)
        command.add_argument("inputs", nargs="+", help=inputs)
        command.add_argument(
            "--model",
            help="'demo', a Hub id, or a local folder: a save_pretrained folder, or an original-layout folder "
            f"(model_config.json + model.safetensors). Default: {model_default}",
        )
        if bottleneck:
            command.add_argument(
                "--bottleneck",
                choices=BOTTLENECKS,
                default="2x15625_700bps",
                help="post-hoc residual FSQ preset, or 'none' for the training-time FSQ (default: %(default)s)",
            )
        command.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
        command.add_argument("--dtype", choices=list(DTYPES), default="float32")
        command.add_argument("--attn-implementation", choices=ATTENTION, default="sdpa")
        command.add_argument(
            "--chunk-length-s",
            type=chunk_length,
            help="code files in chunks of this many seconds, each with the model's receptive field as context: the "
            "same output in memory bounded by the chunk; 0 codes whole files at once (default: files longer than "
            f"{AUTO_CHUNK_S:g} s, or twice the model's receptive field if longer, in chunks of that length)",
        )
        command.add_argument(
            "--overwrite",
            action="store_true",
            help="replace outputs that exist (default: skip them and say so; inputs are never overwritten)",
        )
        if output:
            command.add_argument("-o", "--output-dir", required=True, help=f"folder for the {output} files")
        command.set_defaults(run=run)
        return command

    test_model = "'demo', the model shipped with the package, trained on synthetic espeak-ng speech (a demo only)."
    add_command(
        "encode",
        command_encode,
        "audio files -> codes files",
        "audio files or folders",
        test_model,
        output="<name>.codes.safetensors",
    )
    decode = add_command(
        "decode",
        command_decode,
        "codes files -> 16 kHz WAV files",
        "codes files or folders",
        "the model recorded in each codes file.",
        output="decoded <name>.wav",
        bottleneck=False,
    )
    decode.add_argument(
        "--stream",
        action="store_true",
        help="decode frame by frame (model.decode_stream) and write the audio as it comes; with -o - as raw 16-bit "
        "PCM (s16le, mono, model rate) to stdout",
    )
    decode.add_argument(
        "--lookahead-frames",
        type=int,
        help="with --stream: future frames the decoder sees (default: its receptive field, the exact audio)",
    )
    decode.add_argument(
        "--allow-other-weights",
        action="store_true",
        help="decode even when the model's weights differ from those the codes were made with (a warning each)",
    )
    add_command(
        "reconstruct",
        command_reconstruct,
        "encode and decode audio files; print the bitrate and the metrics",
        "audio files or folders",
        test_model,
        output="decoded <name>.wav",
    )
    evaluate = add_command(
        "evaluate",
        command_evaluate,
        "a table of the metrics over many audio files",
        "audio files or folders",
        test_model,
    )
    evaluate.add_argument("--csv", help="write one row per file to this CSV file, as each file completes")
    evaluate.add_argument("--json", help="write the rows, the means and the settings to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tokenize"]:  # the corpus tokenizer has its own options and runs under Accelerate
        from .tokenize import main as tokenize

        return tokenize(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as error:
        print(f"stable-codec: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("stable-codec: interrupted; the files finished so far are kept.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
