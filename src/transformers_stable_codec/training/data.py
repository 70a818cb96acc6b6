"""Force-aligned speech for training: sources, crops that keep their words, augmentation, batching.

Two sources hold clips and word timings in the original's format (`{"transcript": [{"word", "start", "end"}, ...]}`,
seconds): a `datasets` dataset with an audio column and a `force_aligned_text` column, or WebDataset-style tar
shards where `KEY.flac` (or `.wav`, `.ogg`, `.mp3`) sits beside `KEY.json` holding `force_aligned_text`.

A clip that cannot be used (unreadable audio, missing or malformed transcript, word timings outside the audio) is
skipped: the next clip takes its place and the batch reports the skip, which the trainer counts and logs.
"""

import glob
import io
import json
import math
import pathlib
import tarfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import soundfile
import torch

from .phonemes import Phonemizer


AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3", "opus")
TIMING_TOLERANCE_SECONDS = 0.05  # word ends may overshoot the audio by this much (aligner rounding)


SKIP_REASONS = ("unreadable audio", "missing transcript", "malformed transcript", "word timings outside the audio")


class BadSample(Exception):
    """A clip that cannot be trained on; `reason` is the category it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class RawClip:
    audio: np.ndarray  # (samples,) float32 mono
    sampling_rate: int
    transcript: object  # the `force_aligned_text` value as stored (dict, JSON string or None)
    name: str


# --- sources --------------------------------------------------------------------------------------------------------


def decode_audio(data: bytes | str, name: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the rate, from encoded bytes or a file path (soundfile)."""
    try:
        audio, rate = soundfile.read(
            io.BytesIO(data) if isinstance(data, bytes) else data, dtype="float32", always_2d=True
        )
    except Exception as error:  # soundfile raises several types for broken or unsupported files
        raise BadSample("unreadable audio", f"{name}: {error}") from None
    if audio.shape[0] == 0:
        raise BadSample("unreadable audio", f"{name}: no samples")
    return audio.mean(axis=1), int(rate)


class HFDatasetSource:
    """Rows of a `datasets.Dataset`: the audio column is read undecoded and decoded with soundfile."""

    def __init__(self, dataset, audio_column: str = "audio", transcript_column: str | None = "force_aligned_text"):
        import datasets

        for column in (audio_column, transcript_column):
            if column is not None and column not in dataset.column_names:
                raise ValueError(f"The dataset has no column {column!r}; its columns are {dataset.column_names}.")
        if isinstance(dataset.features[audio_column], datasets.Audio):
            dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
        self.dataset, self.audio_column, self.transcript_column = dataset, audio_column, transcript_column

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, index: int) -> RawClip:
        row = self.dataset[index]
        value, name = row[self.audio_column], f"row {index}"
        if isinstance(value, dict) and value.get("array") is not None:
            audio, rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
            audio = audio.mean(axis=0) if audio.ndim == 2 else audio
        elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            name = value.get("path") or name
            audio, rate = decode_audio(value.get("bytes") or value["path"], name)
        else:
            raise BadSample("unreadable audio", f"{name}: no audio bytes or path")
        transcript = row[self.transcript_column] if self.transcript_column else None
        return RawClip(audio, rate, transcript, str(name))


@dataclass
class _ShardSample:
    shard: int
    key: str
    audio: tuple[int, int] | None = None  # (offset, size) of the member's data
    metadata: tuple[int, int] | None = None


class ShardSource:
    """WebDataset-style tar shards, indexed once (member headers only) for random access."""

    def __init__(self, pattern: str | list[str]):
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        self.shards = sorted(path for item in patterns for path in (glob.glob(item) or [item]))
        missing = [path for path in self.shards if not pathlib.Path(path).is_file()]
        if missing or not self.shards:
            raise FileNotFoundError(f"No tar shards at {missing or patterns}.")
        self.samples: list[_ShardSample] = []
        for shard_index, path in enumerate(self.shards):
            grouped: dict[str, _ShardSample] = {}
            with tarfile.open(path) as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, _, extension = base.partition(".")
                    key = f"{folder}/{stem}" if folder else stem
                    sample = grouped.setdefault(key, _ShardSample(shard_index, key))
                    if extension.lower() in AUDIO_EXTENSIONS:
                        sample.audio = (member.offset_data, member.size)
                    elif extension.lower() == "json":
                        sample.metadata = (member.offset_data, member.size)
            self.samples.extend(grouped.values())

    def __len__(self) -> int:
        return len(self.samples)

    def _member(self, sample: _ShardSample, location: tuple[int, int]) -> bytes:
        with open(self.shards[sample.shard], "rb") as file:
            file.seek(location[0])
            return file.read(location[1])

    def read(self, index: int) -> RawClip:
        sample = self.samples[index]
        name = f"{self.shards[sample.shard]}:{sample.key}"
        if sample.audio is None:
            raise BadSample("unreadable audio", f"{name}: no audio member")
        audio, rate = decode_audio(self._member(sample, sample.audio), name)
        transcript = None
        if sample.metadata is not None:
            try:
                transcript = json.loads(self._member(sample, sample.metadata)).get("force_aligned_text")
            except (ValueError, AttributeError) as error:
                raise BadSample("malformed transcript", f"{name}: {error}") from None
        return RawClip(audio, rate, transcript, name)


def source_from_config(spec: dict):
    """A source from a data config entry: `{"type": "shards", "path": glob}` or `{"type": "hf", "path": ...,
    "split": ..., "audio_column": ..., "transcript_column": ...}` (a `save_to_disk` folder or a Hub dataset)."""
    kind = spec.get("type")
    if kind == "shards":
        return ShardSource(spec["path"])
    if kind == "hf":
        import datasets

        path = pathlib.Path(spec["path"])
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[spec.get("split", "train")]
        else:
            dataset = datasets.load_dataset(spec["path"], spec.get("name"), split=spec.get("split", "train"))
        return HFDatasetSource(
            dataset, spec.get("audio_column", "audio"), spec.get("transcript_column", "force_aligned_text")
        )
    raise ValueError(f"Unknown data source type {kind!r}: use 'hf' (a datasets dataset) or 'shards' (tar shards).")


# --- transcripts and crops --------------------------------------------------------------------------------------


def parse_transcript(value, duration: float, name: str) -> list[tuple[str, float, float]]:
    """Words with start and end in seconds from `force_aligned_text`; checks that the timings lie in the clip."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise BadSample("malformed transcript", f"{name}: {error}") from None
    if value is None or (isinstance(value, dict) and value.get("transcript") is None):
        raise BadSample("missing transcript", name)
    try:
        words = [(str(entry["word"]), float(entry["start"]), float(entry["end"])) for entry in value["transcript"]]
    except (KeyError, TypeError, ValueError) as error:
        raise BadSample("malformed transcript", f"{name}: {error!r}") from None
    for word, start, end in words:
        if (
            not (math.isfinite(start) and math.isfinite(end))
            or start < 0
            or end < start
            or end > duration + TIMING_TOLERANCE_SECONDS
        ):
            raise BadSample(
                "word timings outside the audio",
                f"{name}: {word!r} at {start:.3f}-{end:.3f} s in {duration:.3f} s of audio",
            )
    return words


def words_in_window(words: list[tuple[str, float, float]], start: float, end: float) -> list[str]:
    """Words whose span overlaps [start, end] (seconds), in order: those cut by the crop's edges are kept, as the
    original keeps any word that starts or ends inside the crop (and, here, also a word that spans the whole crop)."""
    return [word for word, word_start, word_end in words if word_start <= end and word_end >= start]


# --- the dataset ------------------------------------------------------------------------------------------------


@dataclass
class AugmentationConfig:
    loudness_target: float | None = -20.0  # LUFS; None turns loudness normalization off
    loudness_range: float = 5.0  # target drawn uniformly from target ± range
    phase_flip_probability: float = 0.5


class ForceAlignedAudioDataset(torch.utils.data.Dataset):
    """Clips of a source as training items: `audio` (1, samples), `padding_mask` (samples,), `phonemes` (indices
    into the CTC inventory of the words in the crop), `text`, and `skipped` (reasons for clips passed over).

    With `sample_size`, each item is a crop of that many samples (random when `random_crop`, padded when the clip
    is shorter); without it, whole clips (validation). The crop, loudness target and phase flip of an item depend
    only on `(seed, epoch, index)`, so that a resumed run sees exactly the data of an uninterrupted one (the
    epoch comes with the key, see `EpochSampler`).
    """

    def __init__(
        self,
        source,
        sampling_rate: int,
        sample_size: int | None = None,
        random_crop: bool = True,
        augmentation: AugmentationConfig | None = None,
        phonemizer: Phonemizer | None = None,
        seed: int = 0,
        max_consecutive_bad: int = 32,
    ):
        if len(source) == 0:
            raise ValueError("The data source is empty.")
        self.source, self.sampling_rate, self.sample_size = source, sampling_rate, sample_size
        self.random_crop, self.augmentation, self.phonemizer = random_crop, augmentation, phonemizer
        self.seed, self.max_consecutive_bad = seed, max_consecutive_bad
        self._meter = None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int) -> dict:
        """`key` is `epoch * len(self) + index` (as `EpochSampler` yields them), or a plain index (epoch 0)."""
        epoch, index = divmod(int(key), len(self.source))
        skipped = []
        for attempt in range(self.max_consecutive_bad):
            position = (index + attempt) % len(self.source)
            try:
                item = self.load(position, epoch)
            except BadSample as bad:
                skipped.append((bad.reason, str(bad)))
                continue
            item["skipped"] = skipped
            return item
        reasons = Counter(reason for reason, _ in skipped)
        raise RuntimeError(
            f"{self.max_consecutive_bad} consecutive clips from index {index} could not be used ({dict(reasons)}); "
            f"the data looks broken. First: {skipped[0][1]}"
        )

    def load(self, index: int, epoch: int = 0) -> dict:
        rng = np.random.default_rng([self.seed, epoch, index])
        clip = self.source.read(index)
        audio = self._resample(clip.audio, clip.sampling_rate)
        if not np.isfinite(audio).all():
            raise BadSample("unreadable audio", f"{clip.name}: non-finite samples")
        duration = len(audio) / self.sampling_rate
        words = parse_transcript(clip.transcript, duration, clip.name) if self.phonemizer is not None else None

        offset = 0
        if self.sample_size is not None and len(audio) > self.sample_size and self.random_crop:
            offset = int(rng.integers(0, len(audio) - self.sample_size + 1))
        length = len(audio) if self.sample_size is None else self.sample_size
        crop = audio[offset : offset + length]
        valid = len(crop)
        crop = self._augment(crop, rng)
        padded = np.zeros(length, dtype=np.float32)
        padded[:valid] = crop
        mask = np.zeros(length, dtype=bool)
        mask[:valid] = True

        item = {"audio": torch.from_numpy(padded)[None], "padding_mask": torch.from_numpy(mask), "name": clip.name}
        if words is not None:
            kept = words_in_window(words, offset / self.sampling_rate, (offset + valid) / self.sampling_rate)
            item["text"] = " ".join(kept)
            item["phonemes"] = torch.tensor(self.phonemizer.encode(item["text"]), dtype=torch.long)
        return item

    def _resample(self, audio: np.ndarray, rate: int) -> np.ndarray:
        if rate == self.sampling_rate:
            return audio.astype(np.float32, copy=False)
        from scipy.signal import resample_poly

        divisor = math.gcd(rate, self.sampling_rate)
        return resample_poly(audio, self.sampling_rate // divisor, rate // divisor).astype(np.float32)

    def _augment(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        config = self.augmentation
        if config is None:
            return audio
        gain_draw, flip_draw = rng.random(), rng.random()
        if config.loudness_target is not None:
            audio = self.normalize_loudness(
                audio, config.loudness_target + (2 * gain_draw - 1) * config.loudness_range
            )
        if flip_draw < config.phase_flip_probability:
            audio = -audio
        return audio

    def normalize_loudness(self, audio: np.ndarray, target_lufs: float) -> np.ndarray:
        """Scales to `target_lufs` integrated loudness (ITU-R BS.1770, pyloudnorm); silent or too short (< 0.4 s)
        audio is left alone; a result that would clip is scaled down to a 0.95 peak."""
        import pyloudnorm

        if self._meter is None:
            self._meter = pyloudnorm.Meter(self.sampling_rate)
        if len(audio) < int(0.4 * self.sampling_rate) or float(np.mean(audio.astype(np.float64) ** 2)) < 1e-8:
            return audio
        loudness = self._meter.integrated_loudness(audio.astype(np.float64))
        if not math.isfinite(loudness):
            return audio
        audio = audio * np.float32(10.0 ** ((target_lufs - loudness) / 20.0))
        peak = float(np.abs(audio).max())
        return audio * np.float32(0.95 / peak) if peak >= 1.0 else audio


def collate(items: list[dict]) -> dict:
    """Pads to the longest item; `phonemes` stay a list (CTC targets have their own lengths)."""
    length = max(item["audio"].shape[-1] for item in items)
    audio = torch.zeros(len(items), 1, length)
    padding_mask = torch.zeros(len(items), length, dtype=torch.bool)
    for row, item in enumerate(items):
        audio[row, :, : item["audio"].shape[-1]] = item["audio"]
        padding_mask[row, : item["padding_mask"].shape[-1]] = item["padding_mask"]
    batch = {
        "audio": audio,
        "padding_mask": padding_mask,
        "skipped": [entry for item in items for entry in item["skipped"]],
    }
    if "phonemes" in items[0]:
        batch["phonemes"] = [item["phonemes"] for item in items]
        batch["text"] = [item["text"] for item in items]
    return batch


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the dataset fixed by `(seed, epoch)`, yielding keys `epoch * size + index`: the epoch
    travels with each index to the dataset, also into persistent loader workers."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter((self.epoch * self.size + torch.randperm(self.size, generator=generator)).tolist())


__all__ = [
    "SKIP_REASONS",
    "AugmentationConfig",
    "BadSample",
    "EpochSampler",
    "ForceAlignedAudioDataset",
    "HFDatasetSource",
    "ShardSource",
    "collate",
    "parse_transcript",
    "source_from_config",
    "words_in_window",
]
