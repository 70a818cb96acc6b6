"""Tokenize a speech corpus into Parquet shards of codes, in one process or many, on Accelerate.

    stable-codec tokenize INPUT --output-dir OUT [--model M] [--bottleneck B] [--dtype D] [--batch-seconds S] ...
    accelerate launch --num_processes N -m transformers_stable_codec.tokenize INPUT --output-dir OUT ...

INPUT is a folder of audio files (searched recursively), a `datasets` dataset saved with `save_to_disk`, Parquet or
Arrow files (a file or a folder of them), or a Hub dataset id. Each process takes every N-th clip, decodes clips in
DataLoader workers, cuts its share into windows of `--window-clips` clips, sorts each window by length into batches
of at most `--batch-seconds` of padded audio, preprocesses them on its device (the feature extractor's resampler and
loudness meter), encodes them and writes one Parquet shard per window, atomically. A run that is killed and started
again with the same command skips the windows whose shard exists, so no clip is lost or written twice, and the result
equals an uninterrupted run's. Unreadable or invalid clips are listed with their reason beside their window's shard
and in `manifest.json`, which the first process writes at the end (docs/tokenize.md).
"""

import argparse
import dataclasses
import io
import json
import math
import os
import pathlib
import sys
import time

import numpy as np
import soundfile
import torch

from .command_support import (
    ATTENTION,
    AUDIO_SUFFIXES,
    BOTTLENECKS,
    DEMO_NAME,
    DTYPES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    FileFailure,
    bottleneck_argument,
    hub_load_options,
    read_audio,
    resolve_model,
    weights_sha256,
    write_atomically,
)


RUN_FILE, MANIFEST_FILE = "run.json", "manifest.json"


class TokenizeError(Exception):
    """The run cannot start or go on (bad arguments, an output folder of another run); the message says why."""


@dataclasses.dataclass
class Clip:
    """One decoded clip: (channels, samples) float32 at its own rate, or the reason it could not be decoded."""

    id: str
    waveform: np.ndarray | None = None
    sampling_rate: int = 0
    error: str | None = None


# Sources: what the clips are and how to decode one --------------------------------------------------------------


class FolderSource:
    """Audio files under a folder, in sorted order; a clip's id is its path relative to the folder."""

    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        self.paths = sorted(
            path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES
        )
        if not self.paths:
            raise TokenizeError(f"{folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)}).")
        self.ids = [path.relative_to(folder).as_posix() for path in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, index: int) -> Clip:
        try:
            waveform, rate = read_audio(self.paths[index])
        except FileFailure as failure:
            return Clip(self.ids[index], error=str(failure).removeprefix(f"{self.paths[index]}: "))
        return Clip(self.ids[index], waveform, rate)


def decode_audio_cell(cell: dict) -> tuple[np.ndarray, int]:
    """A `datasets` audio cell read without decoding (`{"bytes", "path"}`): (channels, samples) float32 and rate."""
    data = cell.get("bytes")
    source = io.BytesIO(data) if data else cell.get("path")
    if source is None:
        raise FileFailure("the audio cell holds neither bytes nor a path.")
    try:
        audio, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError) as error:
        raise FileFailure(f"cannot read it as audio ({error}).") from None
    if audio.shape[0] == 0:
        raise FileFailure("the clip holds no samples.")
    if not np.isfinite(audio).all():
        raise FileFailure("the audio holds NaN or infinite samples.")
    return audio.T, rate


class DatasetSource:
    """A `datasets.Dataset` with an audio column (read undecoded, decoded by soundfile in the workers); a clip's id
    is the id column's value, or its row number."""

    def __init__(self, dataset, audio_column: str, id_column: str | None):
        from datasets import Audio

        for name in (audio_column, id_column):
            if name is not None and name not in dataset.column_names:
                raise TokenizeError(f"the dataset has no column {name!r}; its columns: {dataset.column_names}.")
        if not isinstance(dataset.features[audio_column], Audio):
            raise TokenizeError(f"column {audio_column!r} is not an Audio column: {dataset.features[audio_column]}.")
        self.dataset = dataset.cast_column(audio_column, Audio(decode=False))
        self.audio_column = audio_column
        ids = self.dataset[id_column] if id_column else range(len(dataset))
        self.ids = [str(value) for value in ids]
        if len(set(self.ids)) != len(self.ids):
            raise TokenizeError(f"the id column {id_column!r} holds duplicate values; ids must name one clip each.")

    def __len__(self) -> int:
        return len(self.ids)

    def decode(self, index: int) -> Clip:
        try:
            waveform, rate = decode_audio_cell(self.dataset[index][self.audio_column])
        except FileFailure as failure:
            return Clip(self.ids[index], error=str(failure))
        return Clip(self.ids[index], waveform, rate)


def open_source(args):
    """The source INPUT names: a folder of audio, a saved dataset, Parquet/Arrow files, or a Hub dataset id."""
    location = pathlib.Path(args.input)
    if location.is_dir() and not (location / "dataset_info.json").is_file() and not list_data_files(location):
        return FolderSource(location)
    import datasets

    if location.is_dir() and (location / "dataset_info.json").is_file():
        dataset = datasets.load_from_disk(str(location))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[args.split]
    elif location.exists():
        files = [location] if location.is_file() else list_data_files(location)
        kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
        dataset = datasets.load_dataset(kind, data_files=[str(path) for path in files], split="train")
    else:
        dataset = datasets.load_dataset(args.input, split=args.split)
    return DatasetSource(dataset, args.audio_column, args.id_column)


def list_data_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in folder.rglob("*") if path.suffix in (".parquet", ".arrow"))


class ShareOfClips(torch.utils.data.Dataset):
    """The clips at `indices` of a source, decoded in DataLoader workers (in order)."""

    def __init__(self, source, indices: list[int]):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Clip:
        return self.source.decode(self.indices[position])


# Batching and encoding --------------------------------------------------------------------------------------------


def length_batches(clips: list[Clip], batch_seconds: float) -> list[list[Clip]]:
    """Clips sorted by duration (longest first) and cut into batches whose padded audio (clips x the longest) stays
    within `batch_seconds`; a clip longer than that is a batch of its own."""
    ordered = sorted(clips, key=lambda clip: -clip.waveform.shape[-1] / clip.sampling_rate)
    batches, current = [], []
    for clip in ordered:
        longest = current[0].waveform.shape[-1] / current[0].sampling_rate if current else 0.0
        if current and (len(current) + 1) * longest > batch_seconds:
            batches.append(current)
            current = []
        current.append(clip)
    return batches + ([current] if current else [])


class Tokenizer:
    """The model, its feature extractor on the same device, and the bottleneck: clips in, rows of codes out."""

    def __init__(self, model, feature_extractor, bottleneck: str | None, bucket_seconds: float, compile_mode=None):
        self.model, self.feature_extractor, self.bottleneck = model, feature_extractor, bottleneck
        self.encode = model.encode
        if compile_mode is not None:
            self.encode = torch.compile(model.encode, mode=compile_mode, dynamic=False)
        # CUDA graphs (reduce-overhead) replay into the same memory: each call starts a new step.
        self.marks_steps = compile_mode in ("reduce-overhead", "max-autotune")
        # Padded lengths rounded up to whole buckets: few distinct shapes, so a compiled model reuses its graphs.
        self.bucket = max(1, round(bucket_seconds * model.sampling_rate / model.hop_length)) * model.hop_length
        self.seconds = {"preprocess": 0.0, "model": 0.0}

    @torch.inference_mode()
    def rows(self, clips: list[Clip]) -> list[dict]:
        device = self.model.device
        start = time.perf_counter()
        features = self.feature_extractor(
            [clip.waveform for clip in clips],
            sampling_rate=[clip.sampling_rate for clip in clips],
            return_tensors="pt",
            device=device,
        )
        input_values, padding_mask = features["input_values"], features["padding_mask"]
        padding = -input_values.shape[-1] % self.bucket
        if padding:
            input_values = torch.nn.functional.pad(input_values, (0, padding))
            padding_mask = torch.nn.functional.pad(padding_mask, (0, padding))
        if bool(padding_mask.all()):
            # No clip is padded: no mask to build (and the compiled flex kernel of torch 2.11 fails on padding masks).
            padding_mask = None
        synchronize(device)
        encoding = time.perf_counter()
        if self.marks_steps:
            torch.compiler.cudagraph_mark_step_begin()
        encoded = self.encode(input_values, padding_mask=padding_mask, posthoc_bottleneck=self.bottleneck)
        codes = encoded.audio_codes.cpu()
        frames = encoded.audio_codes.shape[-1]
        num_frames = (
            torch.full((len(clips),), frames) if padding_mask is None else encoded.audio_codes_mask.sum(-1).cpu()
        )
        done = time.perf_counter()
        self.seconds["preprocess"] += encoding - start
        self.seconds["model"] += done - encoding
        return [
            {
                "id": clip.id,
                "audio_codes": codes[row, :, : int(num_frames[row])].tolist(),
                "num_frames": int(num_frames[row]),
                "duration_s": clip.waveform.shape[-1] / clip.sampling_rate,
            }
            for row, clip in enumerate(clips)
        ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Output -------------------------------------------------------------------------------------------------------------


def shard_name(rank: int, world_size: int, window: int) -> str:
    """`train-...`: `datasets.load_dataset("parquet", data_dir=OUT)` takes files so named as its train split, and
    nothing else of the folder (manifest.json, failures/, stats/)."""
    return f"train-{rank:05d}-of-{world_size:05d}-window-{window:06d}"


def journal_path(output_dir: pathlib.Path, name: str) -> pathlib.Path:
    # Not named train-*: `load_dataset` would take it for a shard.
    return output_dir / "windows" / f"{name.removeprefix('train-')}.json"


def window_done(output_dir: pathlib.Path, name: str) -> bool:
    """A window is done when its journal says how many rows it has and its shard holds them (no shard for none)."""
    journal = journal_path(output_dir, name)
    if not journal.exists():
        return False
    return json.loads(journal.read_text())["rows"] == 0 or (output_dir / f"{name}.parquet").exists()


def write_window(output_dir: pathlib.Path, name: str, rows: list[dict], failures: list[dict]) -> None:
    """The window's journal (its row count and failures), then its shard, each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = json.dumps({"rows": len(rows), "failures": failures}, indent=1) + "\n"
    journal_path(output_dir, name).parent.mkdir(exist_ok=True)
    write_atomically(journal_path(output_dir, name), lambda path: path.write_text(text))
    if not rows:
        return  # an empty Parquet file would break `load_dataset`
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("audio_codes", pa.list_(pa.list_(pa.int32()))),
            ("num_frames", pa.int32()),
            ("duration_s", pa.float64()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    write_atomically(output_dir / f"{name}.parquet", lambda path: pq.write_table(table, path))


def check_run(output_dir: pathlib.Path, run: dict) -> None:
    """A folder of an earlier run resumes only under the same settings: other ones would share clips out otherwise
    and write some of them twice."""
    path = output_dir / RUN_FILE
    if not path.exists():
        return
    earlier = json.loads(path.read_text())
    differing = sorted(key for key in run if earlier.get(key) != run[key])
    if differing:
        changes = ", ".join(f"{key}: {earlier.get(key)!r} there, {run[key]!r} now" for key in differing)
        raise TokenizeError(
            f"{output_dir} holds a run with other settings ({changes}). Resume it with the same command, or tokenize "
            "into another --output-dir."
        )


def write_manifest(output_dir: pathlib.Path, run: dict, model_info: dict) -> dict:
    """Counts every shard and failure of the folder (all ranks) into manifest.json."""
    import pyarrow.parquet as pq

    shards = sorted(output_dir.glob("train-*.parquet"))
    clips, frames, seconds = 0, 0, 0.0
    for shard in shards:
        table = pq.read_table(shard, columns=["num_frames", "duration_s"])
        clips += table.num_rows
        frames += sum(table.column("num_frames").to_pylist())
        seconds += sum(table.column("duration_s").to_pylist())
    failures = []
    for path in sorted(output_dir.glob("windows/*.json")):
        failures += json.loads(path.read_text())["failures"]
    stats = [json.loads(path.read_text()) for path in sorted((output_dir / "stats").glob("rank-*.json"))]
    manifest = {
        **model_info,
        **run,
        "shards": len(shards),
        "clips": clips,
        "failed": len(failures),
        "frames": frames,
        "audio_hours": seconds / 3600,
        "failures": sorted(failures, key=lambda failure: failure["id"]),
        "processes": stats,
    }
    write_atomically(output_dir / MANIFEST_FILE, lambda path: path.write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest


# The run ------------------------------------------------------------------------------------------------------------


def load_model(args, device: torch.device):
    from . import StableCodecFeatureExtractor, StableCodecModel

    location = resolve_model(args.model)
    options = hub_load_options(location)
    model = StableCodecModel.from_pretrained(
        location, dtype=DTYPES[args.dtype], attn_implementation=args.attn_implementation, **options
    )
    model = model.to(device).eval()
    extractor = StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length)
    name = args.model if args.model == DEMO_NAME or not os.path.isdir(args.model) else os.path.abspath(args.model)
    info = {
        "model": name,
        "model_sha256": weights_sha256(location),
        "sampling_rate": model.sampling_rate,
        "frame_rate": model.frame_rate,
        "hop_length": model.hop_length,
        "codebook_sizes": model.codebook_sizes(bottleneck_argument(args.bottleneck)),
    }
    return model, extractor, info


def run(args) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.cpu)
    rank, world_size, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    output_dir = pathlib.Path(args.output_dir)
    if output_dir.resolve() == pathlib.Path(args.input).resolve():
        raise TokenizeError("--output-dir must not be INPUT: the shards would mix with the corpus.")
    run_settings = {
        "input": str(args.input),
        "model_argument": args.model,
        "bottleneck": args.bottleneck,
        "dtype": args.dtype,
        "world_size": world_size,
        "window_clips": args.window_clips,
        "batch_seconds": args.batch_seconds,
    }
    check_run(output_dir, run_settings)
    source = open_source(args)
    model, extractor, model_info = load_model(args, device)
    tokenizer = Tokenizer(model, extractor, bottleneck_argument(args.bottleneck), args.bucket_seconds, args.compile)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for leftover in output_dir.rglob(".*.partial"):  # half-written files of a killed run
            leftover.unlink()
        settings = json.dumps({**run_settings, **model_info}, indent=2) + "\n"
        # Atomically: the other processes may be reading an earlier run's file in check_run.
        write_atomically(output_dir / RUN_FILE, lambda path: path.write_text(settings))
    accelerator.wait_for_everyone()

    # This process's share, cut into windows; windows whose shard exists are done (an earlier, killed run).
    share = list(range(rank, len(source), world_size))
    windows = [share[start : start + args.window_clips] for start in range(0, len(share), args.window_clips)]
    todo = [index for index in range(len(windows)) if not window_done(output_dir, shard_name(rank, world_size, index))]
    indices = [clip for index in todo for clip in windows[index]]
    loader = torch.utils.data.DataLoader(
        ShareOfClips(source, indices),
        batch_size=None,
        num_workers=args.num_workers,
        # The workers decode the next window while the device codes this one.
        prefetch_factor=-(-args.window_clips // args.num_workers) + 1 if args.num_workers else None,
        persistent_workers=False,
    )
    from tqdm.auto import tqdm

    progress = tqdm(
        total=len(indices),
        unit="clip",
        disable=not accelerator.is_main_process,
        desc=f"tokenizing ({world_size} proc.)",
    )
    seconds = {"waiting_for_audio": 0.0, "writing": 0.0}
    audio_seconds, started, first_window = 0.0, time.perf_counter(), None
    clips = iter(loader)
    for index in todo:
        waited = time.perf_counter()
        window = [next(clips) for _ in windows[index]]
        seconds["waiting_for_audio"] += time.perf_counter() - waited
        good = [clip for clip in window if clip.error is None]
        failures = [{"id": clip.id, "reason": clip.error} for clip in window if clip.error is not None]
        rows = []
        for batch in length_batches(good, args.batch_seconds):
            rows += tokenizer.rows(batch)
        writing = time.perf_counter()
        write_window(output_dir, shard_name(rank, world_size, index), rows, failures)
        seconds["writing"] += time.perf_counter() - writing
        audio_seconds += sum(row["duration_s"] for row in rows)
        elapsed = time.perf_counter() - started
        if first_window is None:  # compilation and the workers' start-up fall into the first window
            first_window = {"audio_seconds": audio_seconds, "wall_seconds": elapsed}
        progress.update(len(window))
        progress.set_postfix(hours=f"{audio_seconds / 3600:.2f}", realtime=f"{audio_seconds / elapsed:,.0f}x")
    progress.close()
    elapsed = time.perf_counter() - started
    stats = {
        "rank": rank,
        "device": str(device),
        "clips": len(indices),
        "audio_seconds": audio_seconds,
        "wall_seconds": elapsed,
        "realtime_factor": audio_seconds / elapsed if elapsed else None,
        "first_window": first_window,
        "realtime_factor_after_first_window": (
            (audio_seconds - first_window["audio_seconds"]) / (elapsed - first_window["wall_seconds"])
            if first_window and elapsed > first_window["wall_seconds"]
            else None
        ),
        "seconds": {**seconds, **tokenizer.seconds},
    }
    (output_dir / "stats").mkdir(exist_ok=True)
    write_atomically(output_dir / "stats" / f"rank-{rank:05d}.json", lambda path: path.write_text(json.dumps(stats)))
    accelerator.wait_for_everyone()
    manifest = write_manifest(output_dir, run_settings, model_info) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    return manifest


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="stable-codec tokenize", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "input", help="a folder of audio files, a saved dataset, Parquet/Arrow files, or a Hub dataset id"
    )
    parser.add_argument("--output-dir", required=True, help="where the shards and manifest.json go")
    parser.add_argument("--model", default=DEMO_NAME, help="a Hub id or local folder (default: the demo model)")
    parser.add_argument(
        "--bottleneck",
        choices=BOTTLENECKS,
        default="2x15625_700bps",
        help="post-hoc residual FSQ preset, or 'none' for the training-time FSQ (default: %(default)s)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--attn-implementation", choices=ATTENTION, default="sdpa")
    parser.add_argument("--batch-seconds", type=positive_float, default=160.0, help="padded audio per batch")
    parser.add_argument("--bucket-seconds", type=positive_float, default=1.0, help="padded lengths round up to these")
    parser.add_argument("--window-clips", type=positive_int, default=512, help="clips per window (and per shard)")
    parser.add_argument("--num-workers", type=non_negative_int, default=min(8, os.cpu_count() or 1))
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile the encoder, in this mode (default: %(const)s); reduce-overhead adds CUDA graphs (GPUs)",
    )
    parser.add_argument("--cpu", action="store_true", help="run on CPU processes even where GPUs exist")
    parser.add_argument("--split", default="train", help="dataset split (saved DatasetDicts and Hub datasets)")
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument("--id-column", help="column naming each clip (default: its row number)")
    return parser


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def require_extras() -> None:
    """Accelerate, datasets and pyarrow are an extra: say how to get them rather than fail on an import."""
    for module in ("accelerate", "datasets", "pyarrow"):
        try:
            __import__(module)
        except ImportError:
            raise TokenizeError(
                f"the corpus tokenizer needs {module}: pip install 'transformers-stable-codec[tokenize]'."
            ) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require_extras()
        manifest = run(args)
    except TokenizeError as error:
        print(f"stable-codec tokenize: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if manifest is None:  # not the main process
        return EXIT_OK
    print(
        f"{manifest['clips']} clips ({manifest['audio_hours']:.3f} h) in {manifest['shards']} shards, "
        f"{manifest['failed']} failed; manifest: {pathlib.Path(args.output_dir) / MANIFEST_FILE}"
    )
    return EXIT_FAILED if manifest["failed"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
