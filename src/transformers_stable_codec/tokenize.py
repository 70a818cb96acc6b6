"""Tokenize a speech corpus into Parquet shards of codes, in one process or many, on Accelerate.

    stable-codec tokenize INPUT --output-dir OUT [--model M] [--bottleneck B] [--dtype D] [--batch-seconds S] ...
    accelerate launch --num_processes N -m transformers_stable_codec.tokenize INPUT --output-dir OUT ...

INPUT is a folder of audio files (searched recursively), a `datasets` dataset saved with `save_to_disk`, Parquet or
Arrow files (a file or a folder of them), or a Hub dataset id, also streamed (`--streaming`). Each process takes every
N-th clip (a stream: its part by `split_dataset_by_node`), decodes clips in DataLoader workers, cuts its share into
windows of `--window-clips` clips, batches clips of one padded length up to `--batch-seconds` of padded audio,
preprocesses them on its device (the feature extractor's resampler and loudness meter), encodes them and writes one
Parquet shard per window, atomically. On a GPU the copies, the preprocessing, the model and the writing overlap. A run
that is killed and started again with the same command skips the windows whose shard exists, so no clip is lost or
written twice, and the result equals an uninterrupted run's. Unreadable or invalid clips are listed with their reason
beside their window's shard and in `manifest.json`, which the first process writes at the end (docs/tokenize.md).
"""

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import pathlib
import queue
import sys
import threading
import time

import numpy as np
import soundfile
import torch

from . import audio_processing
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
from .feature_extraction_stable_codec import checked_clip, checked_sampling_rate


RUN_FILE, MANIFEST_FILE = "run.json", "manifest.json"


class TokenizeError(Exception):
    """The run cannot start or go on (bad arguments, an output folder of another run); the message says why."""


@dataclasses.dataclass
class Clip:
    """One decoded clip: (channels, samples) float32 at its own rate, or the reason it could not be decoded; `window`:
    the window of the share it belongs to. The waveform is let go once it is on the device; `num_samples` stays."""

    id: str
    waveform: np.ndarray | torch.Tensor | None = None
    sampling_rate: int = 0
    error: str | None = None
    window: int = -1
    done_before: bool = False  # a streamed clip of a window an earlier run wrote: passed on undecoded
    num_samples: int = dataclasses.field(init=False, default=0)

    def __post_init__(self):
        if self.waveform is not None:
            self.num_samples = self.waveform.shape[-1]

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sampling_rate

    def pin_memory(self) -> "Clip":
        """The DataLoader's pinning thread calls this: the waveform moves to pinned memory, from which the copy to
        the GPU runs without holding up the host."""
        if self.waveform is not None:
            self.waveform = torch.from_numpy(np.ascontiguousarray(self.waveform)).pin_memory()
        return self


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
    return audio.T, rate  # an empty clip or NaN samples: `checked` reports them as the feature extractor would


class DatasetSource:
    """A `datasets.Dataset` with an audio column (read undecoded, decoded by soundfile in the workers); a clip's id
    is the id column's value, or its row number."""

    def __init__(self, dataset, audio_column: str, id_column: str | None):
        self.dataset = undecoded_audio(dataset, audio_column, id_column)
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


def undecoded_audio(dataset, audio_column: str, id_column: str | None):
    """The dataset (or stream) with its audio column read undecoded, once its columns are checked."""
    from datasets import Audio

    columns = list(dataset.features or {})  # a stream may not know its features before it is read
    for name in (audio_column, id_column):
        if columns and name is not None and name not in columns:
            raise TokenizeError(f"the dataset has no column {name!r}; its columns: {columns}.")
    if columns and not isinstance(dataset.features[audio_column], Audio):
        raise TokenizeError(f"column {audio_column!r} is not an Audio column: {dataset.features[audio_column]}.")
    return dataset.cast_column(audio_column, Audio(decode=False))


class StreamSource:
    """A streamed dataset (`datasets.IterableDataset`, `--streaming`): clips known only as they come, so a clip's id
    is the id column's value, which a resumed run matches against the windows written before."""

    def __init__(self, stream, audio_column: str, id_column: str | None):
        if id_column is None:
            raise TokenizeError("--streaming needs --id-column: a resumed run recognizes the clips done by their ids.")
        self.stream = undecoded_audio(stream, audio_column, id_column)
        self.audio_column, self.id_column = audio_column, id_column


class StreamedClips(torch.utils.data.IterableDataset):
    """This process's part of a stream (`split_dataset_by_node`), decoded in the DataLoader workers. `datasets` gives
    each worker its own shards of the stream, and the DataLoader takes one clip from each worker in turn, so the order
    is fixed by the stream's shards, the number of processes and the number of workers. Clips whose id is in
    `done_ids` (windows of an earlier run) are passed on undecoded."""

    def __init__(self, source: StreamSource, rank: int, world_size: int, done_ids: set[str]):
        from datasets.distributed import split_dataset_by_node

        self.stream = split_dataset_by_node(source.stream, rank=rank, world_size=world_size)
        self.audio_column, self.id_column, self.done_ids = source.audio_column, source.id_column, done_ids

    def __iter__(self):
        for example in self.stream:
            clip_id = str(example[self.id_column])
            if clip_id in self.done_ids:
                yield Clip(clip_id, done_before=True)
                continue
            try:
                waveform, rate = decode_audio_cell(example[self.audio_column])
            except FileFailure as failure:
                yield Clip(clip_id, error=str(failure))
                continue
            yield checked(Clip(clip_id, waveform, rate))


def open_source(args):
    """The source INPUT names: a folder of audio, a saved dataset, Parquet/Arrow files, or a Hub dataset id."""
    location = pathlib.Path(args.input)
    if location.is_dir() and not (location / "dataset_info.json").is_file() and not list_data_files(location):
        if args.streaming:
            raise TokenizeError(
                "--streaming is for datasets (Hub ids, Parquet/Arrow files); an audio folder is read in place."
            )
        return FolderSource(location)
    require_extras("datasets")  # an audio folder does not need it
    import datasets

    if location.is_dir() and (location / "dataset_info.json").is_file():
        dataset = datasets.load_from_disk(str(location))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[args.split]
        if args.streaming:
            dataset = dataset.to_iterable_dataset(num_shards=max(1, args.num_workers))
    elif location.exists():
        files = [location] if location.is_file() else list_data_files(location)
        kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
        files = [str(path) for path in files]
        dataset = datasets.load_dataset(kind, data_files=files, split="train", streaming=args.streaming)
    else:
        dataset = datasets.load_dataset(args.input, split=args.split, streaming=args.streaming)
    if args.streaming:
        return StreamSource(dataset, args.audio_column, args.id_column)
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
        return checked(self.source.decode(self.indices[position]))


def checked(clip: Clip) -> Clip:
    """The clip, or a failure where the feature extractor would refuse it (and with it its whole batch)."""
    if clip.error is None and (reason := unusable(clip)) is not None:
        return Clip(clip.id, error=reason)
    return clip


def unusable(clip: Clip) -> str | None:
    """Why the feature extractor would refuse a decoded clip (and with it its whole batch), or None: its own checks."""
    try:
        checked_sampling_rate(clip.sampling_rate)
        checked_clip(clip.waveform, "the clip", torch.device("cpu"))
    except ValueError as error:
        return str(error)
    return None


# Batching and encoding --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    """Clips of one padded `length` (samples at the model's rate), at most `rows` of them; the model sees `rows`
    rows, the missing ones silent, so that every batch of a length has one shape. `lengths`: each clip's resampled
    length."""

    clips: list[Clip]
    lengths: list[int]
    length: int
    rows: int


class Batcher:
    """Cuts clips into batches: a clip's resampled length is rounded up to whole buckets, and a batch holds
    `batch_seconds // padded length` clips of one padded length. Clips of a length left over at the end of a window
    wait for the next window's clips of that length, but no longer, so a window is written at most one window late
    and a killed run redoes few windows. With `fixed_shapes` (a compiled model), a batch short of clips is filled up
    with silent rows: a compiled model then sees one shape per length and replays its CUDA graph instead of
    compiling again."""

    def __init__(
        self, sampling_rate: int, hop_length: int, bucket_seconds: float, batch_seconds: float, fixed_shapes: bool
    ):
        self.sampling_rate, self.fixed_shapes = sampling_rate, fixed_shapes
        self.bucket = max(1, round(bucket_seconds * sampling_rate / hop_length)) * hop_length
        self.batch_samples = batch_seconds * sampling_rate
        self.waiting: dict[int, list[Clip]] = {}  # padded length -> clips, oldest first

    def add(self, clips: list[Clip]) -> list[Batch]:
        """The batches that `clips` (one window's, decoded) complete, and those of the leftovers of earlier windows."""
        batches = []
        for clip in clips:
            length = self.padded_length(clip)
            waiting = self.waiting.setdefault(length, [])
            waiting.append(clip)
            if len(waiting) == self.rows(length):
                batches.append(self.batch(self.waiting.pop(length), length))
        if clips:
            window = clips[-1].window
            batches += [self.batch(self.waiting.pop(length), length) for length in self.older_than(window)]
        return batches

    def flush(self) -> list[Batch]:
        """The batches of every waiting clip (at the end of the share)."""
        return [self.batch(self.waiting.pop(length), length) for length in list(self.waiting)]

    def older_than(self, window: int) -> list[int]:
        return [length for length, clips in self.waiting.items() if clips[0].window < window]

    def padded_length(self, clip: Clip) -> int:
        return -(-self.resampled_length(clip) // self.bucket) * self.bucket

    def resampled_length(self, clip: Clip) -> int:
        return audio_processing.resampled_length(clip.num_samples, clip.sampling_rate, self.sampling_rate)

    def rows(self, length: int) -> int:
        return max(1, int(self.batch_samples // length))

    def batch(self, clips: list[Clip], length: int) -> Batch:
        rows = self.rows(length) if self.fixed_shapes else len(clips)
        return Batch(clips, [self.resampled_length(clip) for clip in clips], length, rows)


@dataclasses.dataclass
class Prepared:
    """A batch's model input on the device; `started` and `ready`: CUDA events around its preprocessing."""

    batch: Batch
    input_values: torch.Tensor
    padding_mask: torch.Tensor | None
    started: object = None
    ready: object = None


@dataclasses.dataclass
class Launched:
    """A batch whose codes are on their way to `codes` (host memory); `started` and `done`: CUDA events around the
    model and the copy."""

    prepared: Prepared
    codes: torch.Tensor
    started: object = None
    done: object = None


def use_deterministic_inductor() -> None:
    """Inductor times candidate kernel configurations on the device and keeps the fastest, and their reduction orders
    differ: two runs, or a resumed run's windows, would then differ in a few tokens (on an H200 in bf16, 83 % of 10 s
    clips had at least one). Its deterministic mode chooses without timing. TORCHINDUCTOR_DETERMINISTIC=0 in the
    environment keeps the timed choice."""
    if "TORCHINDUCTOR_DETERMINISTIC" in os.environ:
        return
    import torch._inductor.config

    if hasattr(torch._inductor.config, "deterministic"):
        torch._inductor.config.deterministic = True
    else:
        print(
            f"stable-codec tokenize: warning: torch {torch.__version__} has no deterministic inductor mode: compiled "
            "runs may differ in a few tokens from run to run (and a resumed run's windows from an uninterrupted "
            "run's).",
            file=sys.stderr,
        )


class Tokenizer:
    """The model, its feature extractor on the same device, and the bottleneck, in three steps that overlap on a GPU:
    `prepare` copies a batch to the device and preprocesses it on a side stream, `launch` queues the model and the
    copy of the codes to pinned host memory on the main stream behind the preprocessing, and `finish` waits for the
    codes. Called as prepare(k + 1), launch(k + 1), finish(k), the GPU runs the model on batch k + 1, queued behind
    batch k, while the host turns batch k's codes into rows and prepares batch k + 2: it never waits for the host."""

    def __init__(self, model, feature_extractor, bottleneck: str | None, compile_mode=None):
        self.model, self.feature_extractor, self.bottleneck = model, feature_extractor, bottleneck
        self.device = model.device
        self.encode = model.encode
        if compile_mode is not None:
            use_deterministic_inductor()
            self.encode = torch.compile(model.encode, mode=compile_mode, dynamic=False)
        # CUDA graphs (reduce-overhead) replay into the same memory: each call starts a new step.
        self.marks_steps = compile_mode in ("reduce-overhead", "max-autotune")
        # High priority: the extractor waits for some of its results on the host (its checks), which would otherwise
        # wait behind the model's kernels.
        self.side_stream = torch.cuda.Stream(self.device, priority=-1) if self.device.type == "cuda" else None
        # Host seconds of each step (waiting included), and device seconds between each step's CUDA events (GPUs).
        self.seconds = {"preparing": 0.0, "launching": 0.0, "waiting_for_model": 0.0}
        self.device_seconds = {"preprocessing": 0.0, "model": 0.0} if self.side_stream is not None else None

    def event(self, stream):
        if stream is None:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    @torch.inference_mode()
    def prepare(self, batch: Batch) -> Prepared:
        start = time.perf_counter()
        with torch.cuda.stream(self.side_stream) if self.side_stream is not None else contextlib.nullcontext():
            started = self.event(self.side_stream)
            waveforms = [
                clip.waveform.to(self.device, non_blocking=True) if torch.is_tensor(clip.waveform) else clip.waveform
                for clip in batch.clips
            ]
            features = self.feature_extractor(
                waveforms,
                sampling_rate=[clip.sampling_rate for clip in batch.clips],
                return_tensors="pt",
                device=self.device,
            )
            input_values, padding_mask = features["input_values"], features["padding_mask"]
            extra_rows, extra_samples = batch.rows - len(batch.clips), batch.length - input_values.shape[-1]
            input_values = torch.nn.functional.pad(input_values, (0, extra_samples, 0, 0, 0, extra_rows))
            if all(length == batch.length for length in batch.lengths):
                # No clip is padded: no mask (and the compiled flex kernel of torch 2.11 fails on padding masks).
                padding_mask = None
            else:
                # The silent filler rows count as audio, so that no row is all padding.
                padding_mask = torch.nn.functional.pad(padding_mask, (0, extra_samples))
                padding_mask = torch.nn.functional.pad(padding_mask, (0, 0, 0, extra_rows), value=1)
            ready = self.event(self.side_stream)
        for clip in batch.clips:
            # Pinned memory is reused only once the copies from it are done (torch records them): let it go now, so
            # that the host holds only the audio not yet on the device.
            clip.waveform = None
        self.seconds["preparing"] += time.perf_counter() - start
        return Prepared(batch, input_values, padding_mask, started, ready)

    @torch.inference_mode()
    def launch(self, prepared: Prepared) -> Launched:
        start = time.perf_counter()
        main = torch.cuda.current_stream(self.device) if self.side_stream is not None else None
        if main is not None:
            main.wait_event(prepared.ready)
        started = self.event(main)
        if self.marks_steps:
            torch.compiler.cudagraph_mark_step_begin()
        encoded = self.encode(
            prepared.input_values, padding_mask=prepared.padding_mask, posthoc_bottleneck=self.bottleneck
        )
        codes = encoded.audio_codes[: len(prepared.batch.clips)]
        # Into pinned memory, without waiting: queued behind the model, before its next replay overwrites the codes.
        host = torch.empty(codes.shape, dtype=codes.dtype, pin_memory=main is not None)
        host.copy_(codes, non_blocking=True)
        done = self.event(main)
        self.seconds["launching"] += time.perf_counter() - start
        return Launched(prepared, host, started, done)

    def finish(self, launched: Launched) -> list[tuple[Clip, np.ndarray]]:
        """Each clip with its codes (tokens per frame, frames): its own frames, the last partly filled one included,
        as `model.get_audio_codes_mask` counts them."""
        start = time.perf_counter()
        prepared = launched.prepared
        if launched.done is not None:
            launched.done.synchronize()
            self.device_seconds["preprocessing"] += prepared.started.elapsed_time(prepared.ready) / 1000
            self.device_seconds["model"] += launched.started.elapsed_time(launched.done) / 1000
        self.seconds["waiting_for_model"] += time.perf_counter() - start
        codes, hop = launched.codes.numpy(), self.model.hop_length
        batch = prepared.batch
        return [
            (clip, codes[row, :, : -(-length // hop)])
            for row, (clip, length) in enumerate(zip(batch.clips, batch.lengths))
        ]


def listed_windows(loader, windows: list[tuple[int, int]]):
    """(window index, its clips) for each of `windows` (index, clip count), from a loader of their clips in order."""
    clips = iter(loader)
    for index, count in windows:
        yield index, list(itertools.islice(clips, count))


def streamed_windows(loader, window_clips: int, done: dict[int, list[str]]):
    """(window index, its clips) from a loader of streamed clips, cut into windows of `window_clips`, leaving out the
    windows `done` (index: ids) by an earlier run, whose clips come undecoded; their ids must be the same again."""
    clips, index = iter(loader), 0
    while window := list(itertools.islice(clips, window_clips)):
        ids = [clip.id for clip in window]
        # A done window comes back with the same ids (all undecoded); another window holds none of theirs.
        if ids != done[index] if index in done else any(clip.done_before for clip in window):
            raise TokenizeError(
                f"window {index} of the stream holds other clips than the earlier run wrote: the stream (or its "
                "shards, or --num-workers) changed. Tokenize it into another --output-dir."
            )
        if index not in done:
            yield index, window
        index += 1


def windows_in_background(windows, depth: int = 1):
    """The (window index, its clips) of `windows`, collected by a thread, so that receiving the decoded clips from
    the workers overlaps the model."""
    handoff = queue.Queue(maxsize=depth)

    def collect():
        try:
            for index, window in windows:
                for clip in window:
                    clip.window = index
                handoff.put((index, window))
            handoff.put(None)
        except BaseException as error:  # handed to the main thread, which raises it
            handoff.put(error)

    threading.Thread(target=collect, name="tokenize-windows", daemon=True).start()
    while (item := handoff.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


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


def window_table(rows: list[tuple[Clip, np.ndarray]]):
    """A shard's table of (clip, codes) rows, built from the arrays (no Python list per frame)."""
    import pyarrow as pa

    tokens = rows[0][1].shape[0]
    frames = np.array([codes.shape[-1] for _, codes in rows], dtype=np.int32)
    values = np.concatenate([codes.reshape(-1) for _, codes in rows]).astype(np.int32)
    # audio_codes: per clip `tokens` lists, each of its frames.
    frame_offsets = np.concatenate([[0], np.cumsum(np.repeat(frames, tokens))]).astype(np.int32)
    token_offsets = np.arange(0, len(rows) * tokens + 1, tokens, dtype=np.int32)
    audio_codes = pa.ListArray.from_arrays(token_offsets, pa.ListArray.from_arrays(frame_offsets, values))
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("audio_codes", pa.list_(pa.list_(pa.int32()))),
            ("num_frames", pa.int32()),
            ("duration_s", pa.float64()),
        ]
    )
    columns = [
        pa.array([clip.id for clip, _ in rows], pa.string()),
        audio_codes,
        pa.array(frames),
        pa.array([clip.duration_s for clip, _ in rows], pa.float64()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def done_windows(output_dir: pathlib.Path, rank: int, world_size: int) -> dict[int, list[str]]:
    """This process's windows done by an earlier run: index -> the ids of its clips, in order."""
    done = {}
    for journal in sorted((output_dir / "windows").glob(f"{rank:05d}-of-{world_size:05d}-window-*.json")):
        index = int(journal.stem.rsplit("-", 1)[1])
        if window_done(output_dir, shard_name(rank, world_size, index)):
            done[index] = json.loads(journal.read_text())["ids"]
    return done


def write_window(
    output_dir: pathlib.Path, name: str, ids: list[str], rows: list[tuple[Clip, np.ndarray]], failures: list[dict]
):
    """The window's journal (its row count, failures and clip ids), then its shard, each written atomically."""
    import pyarrow.parquet as pq

    text = json.dumps({"rows": len(rows), "failures": failures, "ids": ids}, indent=1) + "\n"
    journal_path(output_dir, name).parent.mkdir(exist_ok=True)
    write_atomically(journal_path(output_dir, name), lambda path: path.write_text(text))
    if not rows:
        return  # an empty Parquet file would break `load_dataset`
    table = window_table(rows)
    write_atomically(output_dir / f"{name}.parquet", lambda path: pq.write_table(table, path))


@dataclasses.dataclass
class OpenWindow:
    index: int
    clips: list[Clip]
    rows: list = dataclasses.field(default_factory=list)
    expected: int = 0


class WindowWriter:
    """Collects each window's rows as their batches finish and has a thread write a window once all its clips are
    coded (rows in the window's order), so that Parquet writing overlaps the model. It counts the audio written, and
    calls `on_first_window` once the first window is written (compilation and start-up fall into it)."""

    def __init__(self, output_dir: pathlib.Path, rank: int, world_size: int, progress, on_first_window):
        self.output_dir, self.rank, self.world_size = output_dir, rank, world_size
        self.progress, self.on_first_window = progress, on_first_window
        self.open: dict[int, OpenWindow] = {}
        self.queue = queue.Queue(maxsize=2)  # bounds the rows held in memory when writing falls behind
        self.error = None
        self.audio_seconds, self.seconds, self.windows_written = 0.0, 0.0, 0
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._write_all, name="tokenize-writer", daemon=True)
        self.thread.start()

    def open_window(self, index: int, clips: list[Clip]) -> None:
        window = OpenWindow(index, clips, expected=sum(clip.error is None for clip in clips))
        if window.expected:
            self.open[index] = window
        else:
            self._hand_over(window)

    def add(self, rows: list[tuple[Clip, np.ndarray]]) -> None:
        for clip, codes in rows:
            window = self.open[clip.window]
            window.rows.append((clip, codes))
            if len(window.rows) == window.expected:
                self._hand_over(self.open.pop(clip.window))

    def close(self) -> None:
        """Waits until every window handed over is written; raises the writer's error, if any."""
        self._hand_over(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _hand_over(self, window: OpenWindow | None) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(window)

    def _write_all(self) -> None:
        while (window := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drained, so that the main thread never blocks on a full queue; it raises the error
            try:
                self._write(window)
            except BaseException as error:
                self.error = error

    def _write(self, window: OpenWindow) -> None:
        start = time.perf_counter()
        order = {clip.id: position for position, clip in enumerate(window.clips)}
        rows = sorted(window.rows, key=lambda row: order[row[0].id])
        failures = [{"id": clip.id, "reason": clip.error} for clip in window.clips if clip.error is not None]
        name = shard_name(self.rank, self.world_size, window.index)
        write_window(self.output_dir, name, [clip.id for clip in window.clips], rows, failures)
        self.seconds += time.perf_counter() - start
        self.audio_seconds += sum(clip.duration_s for clip, _ in rows)
        elapsed = time.perf_counter() - self.started
        if self.windows_written == 0:
            self.on_first_window(self.audio_seconds, elapsed)
        self.windows_written += 1
        self.progress.update(len(window.clips))
        self.progress.set_postfix(
            hours=f"{self.audio_seconds / 3600:.2f}", realtime=f"{self.audio_seconds / elapsed:,.0f}x"
        )


# Settings a run.json of an earlier version lacks, as that version ran.
SETTINGS_BEFORE_STREAMING = {"streaming": False, "streamed_by_workers": None}


def check_run(output_dir: pathlib.Path, run: dict) -> None:
    """A folder of an earlier run resumes only under the same settings: other ones would share clips out otherwise
    and write some of them twice."""
    path = output_dir / RUN_FILE
    if not path.exists():
        return
    earlier = {**SETTINGS_BEFORE_STREAMING, **json.loads(path.read_text())}
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
        "streaming": args.streaming,
        # A stream's order depends on the workers sharing out its shards.
        "streamed_by_workers": args.num_workers if args.streaming else None,
    }
    check_run(output_dir, run_settings)
    source = open_source(args)
    model, extractor, model_info = load_model(args, device)
    tokenizer = Tokenizer(model, extractor, bottleneck_argument(args.bottleneck), args.compile)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for leftover in output_dir.rglob(".*.partial"):  # half-written files of a killed run
            leftover.unlink()
        settings = json.dumps({**run_settings, **model_info}, indent=2) + "\n"
        # Atomically: the other processes may be reading an earlier run's file in check_run.
        write_atomically(output_dir / RUN_FILE, lambda path: path.write_text(settings))
    accelerator.wait_for_everyone()

    # This process's share, cut into windows; windows whose shard exists are done (an earlier, killed run).
    if args.streaming:
        done = done_windows(output_dir, rank, world_size)
        clips = StreamedClips(source, rank, world_size, {clip_id for ids in done.values() for clip_id in ids})
        total = None  # a stream's length is known at its end
    else:
        share = list(range(rank, len(source), world_size))
        windows = [share[start : start + args.window_clips] for start in range(0, len(share), args.window_clips)]
        todo = [
            index for index in range(len(windows)) if not window_done(output_dir, shard_name(rank, world_size, index))
        ]
        indices = [clip for index in todo for clip in windows[index]]
        clips, total = ShareOfClips(source, indices), len(indices)
    loader = torch.utils.data.DataLoader(
        clips,
        batch_size=None,
        num_workers=args.num_workers,
        # The workers decode the next window while the device codes this one.
        prefetch_factor=-(-args.window_clips // args.num_workers) + 1 if args.num_workers else None,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    from tqdm.auto import tqdm

    progress = tqdm(
        total=total,
        unit="clip",
        disable=not accelerator.is_main_process,
        desc=f"tokenizing ({world_size} proc.)",
    )
    seconds = {"waiting_for_audio": 0.0}
    first_window = {}

    def counters() -> dict:
        return {**seconds, **tokenizer.seconds, "writing": writer.seconds}

    def on_first_window(audio_seconds: float, wall_seconds: float) -> None:
        # Compilation and the workers' start-up fall into the first window: the figures after it are the steady ones.
        first_window.update(
            audio_seconds=audio_seconds,
            wall_seconds=wall_seconds,
            seconds=counters(),
            device_seconds=tokenizer.device_seconds and dict(tokenizer.device_seconds),
        )

    writer = WindowWriter(output_dir, rank, world_size, progress, on_first_window)
    batcher = Batcher(
        model.sampling_rate, model.hop_length, args.bucket_seconds, args.batch_seconds, args.compile is not None
    )
    launched = None

    def run_batches(batches: list[Batch]) -> None:
        # Batch k + 1 is prepared and queued before batch k's codes are waited for (Tokenizer).
        nonlocal launched
        for batch in batches:
            queued = tokenizer.launch(tokenizer.prepare(batch))
            if launched is not None:
                writer.add(tokenizer.finish(launched))
            launched = queued

    if args.streaming:
        windows_decoded = windows_in_background(streamed_windows(loader, args.window_clips, done))
    else:
        windows_decoded = windows_in_background(
            listed_windows(loader, [(index, len(windows[index])) for index in todo])
        )
    clips_seen = 0
    while True:
        waited = time.perf_counter()
        window = next(windows_decoded, None)
        seconds["waiting_for_audio"] += time.perf_counter() - waited
        if window is None:
            break
        index, window_clips = window
        clips_seen += len(window_clips)
        writer.open_window(index, window_clips)
        run_batches(batcher.add([clip for clip in window_clips if clip.error is None]))
    run_batches(batcher.flush())
    if launched is not None:
        writer.add(tokenizer.finish(launched))
    writer.close()
    progress.close()
    elapsed = time.perf_counter() - writer.started
    stats = {
        "rank": rank,
        "device": str(device),
        "clips": clips_seen,
        "audio_seconds": writer.audio_seconds,
        "wall_seconds": elapsed,
        "realtime_factor": writer.audio_seconds / elapsed if elapsed else None,
        "first_window": first_window or None,
        "realtime_factor_after_first_window": (
            (writer.audio_seconds - first_window["audio_seconds"]) / (elapsed - first_window["wall_seconds"])
            if first_window and elapsed > first_window["wall_seconds"]
            else None
        ),
        # Host seconds: the main thread's steps (waiting included), and the writer thread's (overlapping them).
        "seconds": counters(),
        # Device seconds between CUDA events (GPUs): the side stream's preprocessing, the main stream's model and copy.
        "device_seconds": tokenizer.device_seconds and dict(tokenizer.device_seconds),
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
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="stream the dataset (for corpora larger than the disk); needs --id-column, and resuming the same "
        "--num-workers",
    )
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


def require_extras(*modules: str) -> None:
    """Accelerate, pyarrow and (for dataset inputs) datasets are an extra: say how to get them rather than fail on an
    import."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise TokenizeError(
                f"the corpus tokenizer needs {module}: pip install 'transformers-stable-codec[tokenize]'."
            ) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require_extras("accelerate", "pyarrow")
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
