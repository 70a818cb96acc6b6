"""Feature extractor for Stable Codec: raw audio of any rate, layout and sample format to the model's 16 kHz mono
input, resampled and loudness-normalized exactly as the original does before encoding."""

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import TensorType, logging

from . import audio_processing
from .original_checkpoint import (
    find_original_layout,
    original_config_kwargs,
    read_original_config,
    split_loading_kwargs,
)


logger = logging.get_logger(__name__)

# Input sampling rates accepted, in Hz: from below telephone audio to the highest common studio rate. The bounds keep
# the work per second of audio bounded (1 Hz would ask for a 16000:1 upsampling filter bank).
MIN_SAMPLING_RATE = 1_000
MAX_SAMPLING_RATE = 384_000

# The original's VolumeNorm: clips whose mean square is below this are silence and keep their level...
SILENCE_MEAN_SQUARE = 1e-6
# ...and a normalized clip whose peak exceeds full scale is scaled down to this peak.
PROTECTED_PEAK = 0.95

# Integer PCM is scaled by the magnitude of its most negative value, so full scale maps to [-1, 1).
_PCM_OFFSET_AND_SCALE = {
    np.dtype(np.int8): (0, 2**7),
    np.dtype(np.int16): (0, 2**15),
    np.dtype(np.int32): (0, 2**31),
    np.dtype(np.uint8): (2**7, 2**7),  # unsigned 8-bit WAV is offset by 128
}


class StableCodecFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Prepares raw audio for [`StableCodecModel`] exactly as the original Stable Codec prepares a file before encoding
    it (`StableCodec.encode(path)`): each channel is resampled to `sampling_rate` with the original's windowed-sinc
    resampler (torchaudio's default `Resample`), the clip is zero-padded to whole latent frames (`hop_length`) and
    mixed down to mono, and its loudness is normalized to `target_loudness` LUFS as the original's `VolumeNorm([-20,
    0])` does, with the original's ITU-R BS.1770-4 meter (torchaudio's `Loudness`). The batch is then padded to a
    common length, a multiple of `hop_length`. All of it is torch code that runs batched on any device (`device=`).

    Accepted audio, for one clip or for each clip of a list:

    - a 1-D array `(num_samples,)`: mono;
    - a 2-D array `(num_channels, num_samples)`: channels first, as torchaudio and `datasets` give them (transpose
      the `(num_samples, num_channels)` arrays of soundfile); the channels are averaged;
    - NumPy arrays, torch tensors or nested lists; floating point samples in [-1, 1], or integer PCM (`int8`,
      `int16`, `int32`, `uint8`), scaled to [-1, 1).

    A list of clips is a batch; a single 2-D array is always one multi-channel clip. Samples are processed in
    float32, as the original processes them.

    Loudness normalization follows the original's `VolumeNorm([-20, 0])`: the loudness of the clip (zero-padded to
    whole latent frames, as the original measures it) is brought to `target_loudness`; a clip whose mean square is
    below 1e-6 (silence) keeps its level; if the gain pushes a sample past full scale, the clip is scaled so that its
    peak is 0.95. Clips shorter than one 400 ms gating block, and clips with no block above the -70 LUFS absolute
    gate, have no BS.1770 loudness and keep their level (the original fails on the former and returns NaN for the
    latter).

    Args:
        feature_size (`int`, defaults to 1):
            Channels of the model input (mono).
        sampling_rate (`int`, defaults to 16000):
            Sampling rate of the model, in Hz; input at any other rate is resampled to it.
        padding_value (`float`, defaults to 0.0):
            Value of the padding samples.
        hop_length (`int`, defaults to 640):
            Samples per latent frame of the model; the padded length is a multiple of it.
        normalize_loudness (`bool`, defaults to `True`):
            Whether to normalize the loudness of every clip to `target_loudness`.
        target_loudness (`float`, defaults to -20.0):
            Target integrated loudness in LUFS.
    """

    model_input_names = ["input_values", "padding_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        hop_length: int = 640,
        normalize_loudness: bool = True,
        target_loudness: float = -20.0,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        if feature_size != 1:
            raise ValueError(f"Stable Codec takes mono audio: `feature_size` must be 1, got {feature_size!r}.")
        if not isinstance(sampling_rate, int) or isinstance(sampling_rate, bool) or sampling_rate <= 0:
            raise ValueError(f"`sampling_rate` must be a positive integer, got {sampling_rate!r}.")
        if self.padding_side != "right":
            # The model reads a clip's length off its padding mask: the padding must follow the audio.
            raise ValueError(
                f"Stable Codec pads after the audio: `padding_side` must be 'right', got {self.padding_side!r}."
            )
        if not isinstance(hop_length, int) or isinstance(hop_length, bool) or hop_length <= 0:
            raise ValueError(f"`hop_length` must be a positive integer, got {hop_length!r}.")
        if not _is_real_number(target_loudness) or not math.isfinite(target_loudness):
            raise ValueError(f"`target_loudness` must be a finite number of LUFS, got {target_loudness!r}.")
        self.hop_length = hop_length
        self.normalize_loudness = bool(normalize_loudness)
        self.target_loudness = float(target_loudness)

    @classmethod
    def get_feature_extractor_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """Also reads a folder or Hub repo in the original layout, which has no preprocessor_config.json: the
        extractor that fits its model."""
        layout = find_original_layout(pretrained_model_name_or_path, **kwargs)
        if layout is None:
            return super().get_feature_extractor_dict(pretrained_model_name_or_path, **kwargs)
        model = original_config_kwargs(read_original_config(layout.model_config_path))
        hop_length = model["patch_size"] * math.prod(model["strides"])
        return {"sampling_rate": model["sampling_rate"], "hop_length": hop_length}, split_loading_kwargs(kwargs)[1]

    def __call__(
        self,
        raw_audio,
        sampling_rate: int | Sequence[int] | None = None,
        return_tensors: str | TensorType | None = None,
        device: str | torch.device = "cpu",
    ) -> BatchFeature:
        """
        Prepares one clip or a batch of clips.

        Args:
            raw_audio (`np.ndarray`, `torch.Tensor`, `list[float]`, or a list of those):
                One clip, or a list of clips; see the class docstring for the accepted layouts and sample formats.
            sampling_rate (`int` or a list of `int`, *optional*):
                Sampling rate of `raw_audio` in Hz, or one rate per clip of a batch; every clip is resampled to
                `self.sampling_rate`: whole numbers of Hz from 1 kHz to 384 kHz, as audio files have (the original's
                resampler needs whole numbers). If omitted, the audio is assumed to be at `self.sampling_rate`.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for torch tensors, `"np"` for NumPy arrays; lists of arrays if omitted.
            device (`str` or `torch.device`, defaults to `"cpu"`):
                Where the resampling and loudness measurement run (batched), e.g. `"cuda"`. With
                `return_tensors="pt"` the returned tensors stay there; NumPy arrays and lists come back to the CPU.

        Returns:
            [`BatchFeature`] with `input_values` of shape `(batch_size, 1, num_samples)` (float32, `num_samples` a
            multiple of `hop_length`) and `padding_mask` of shape `(batch_size, num_samples)` (1 for audio, 0 for
            padding), ready for `StableCodecModel.encode(**features)`.
        """
        device = torch.device(device)
        clips = _as_clip_list(raw_audio)
        rates = self._check_rates(sampling_rate, len(clips))
        signals = [checked_clip(clip, f"clip {index}", device) for index, clip in enumerate(clips)]
        resampled = self._resample(signals, rates)

        # As the original: pad each clip to whole latent frames, then mix down (mean of the channels, float32).
        lengths = [signal.shape[-1] for signal in resampled]
        frames_lengths = [-(-length // self.hop_length) * self.hop_length for length in lengths]
        total = max(frames_lengths)
        batch = torch.zeros(len(clips), total, dtype=torch.float32, device=device)
        for row, signal in enumerate(resampled):
            batch[row, : signal.shape[-1]] = signal.mean(dim=0)
        if self.normalize_loudness:
            batch = self._normalize_loudness(batch, frames_lengths)

        positions = torch.arange(total, device=device)
        padding_mask = (positions[None, :] < torch.tensor(lengths, device=device)[:, None]).to(torch.int32)
        if self.padding_value != 0:
            batch = batch.masked_fill(padding_mask == 0, self.padding_value)
        features = {"input_values": batch[:, None, :], "padding_mask": padding_mask}
        if return_tensors is None or TensorType(return_tensors) != TensorType.PYTORCH:
            features = {key: value.cpu().numpy() for key, value in features.items()}
            if return_tensors is None:
                features = {key: list(value) for key, value in features.items()}
        return BatchFeature(features, tensor_type=return_tensors)

    def _check_rates(self, sampling_rate, num_clips: int) -> list:
        if sampling_rate is None:
            logger.warning_once(
                f"No `sampling_rate` given to {self.__class__.__name__}: assuming the audio is at "
                f"{self.sampling_rate} Hz. Pass `sampling_rate` to have other rates resampled."
            )
            return [self.sampling_rate] * num_clips
        if isinstance(sampling_rate, (list, tuple)):
            if len(sampling_rate) != num_clips:
                raise ValueError(f"{len(sampling_rate)} sampling rates given for {num_clips} clips.")
            return [checked_sampling_rate(rate) for rate in sampling_rate]
        return [checked_sampling_rate(sampling_rate)] * num_clips

    def _resample(self, signals: list[torch.Tensor], rates: list) -> list[torch.Tensor]:
        """Resamples every clip to `self.sampling_rate`: the clips of each input rate together, as one zero-padded
        batch of channels (trailing zeros do not change the resampled samples that are kept)."""
        resampled = list(signals)
        for rate in sorted(set(rates)):
            if rate == self.sampling_rate:
                continue
            members = [index for index, clip_rate in enumerate(rates) if clip_rate == rate]
            width = max(signals[index].shape[-1] for index in members)
            group = torch.cat([_pad_to(signals[index], width) for index in members])
            out = audio_processing.resample(group, rate, self.sampling_rate)
            start = 0
            for index in members:
                channels, length = signals[index].shape
                kept = audio_processing.resampled_length(length, rate, self.sampling_rate)
                resampled[index] = out[start : start + channels, :kept]
                start += channels
        return resampled

    def _normalize_loudness(self, batch: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """The original's VolumeNorm on each row, measured over its first `lengths[row]` samples (the clip padded to
        whole latent frames, which is what the original measures), in the original's float32 arithmetic."""
        if min(lengths) < round(audio_processing.GATE_SECONDS * self.sampling_rate):
            logger.warning_once(
                "Clips shorter than one 400 ms BS.1770 gating block have no integrated loudness: left unnormalized."
            )
        energy = batch.double().square().sum(-1) / torch.tensor(lengths, dtype=torch.float64, device=batch.device)
        loudness = audio_processing.integrated_loudness(batch, self.sampling_rate, lengths).float()
        # Silence, and clips without a defined loudness (too short, nothing above the absolute gate), keep their level.
        normalize = (energy >= SILENCE_MEAN_SQUARE) & torch.isfinite(loudness)
        gain = torch.pow(10.0, (self.target_loudness - loudness) / 20.0)
        normalized = gain[:, None] * batch
        # The original scales to a 0.95 peak only where a sample passes full scale (a peak of exactly 1.0 stays).
        peak = normalized.abs().amax(dim=-1, keepdim=True)
        declipped = normalized / peak * PROTECTED_PEAK
        normalized = torch.where(peak > 1.0, declipped, normalized)
        return torch.where(normalize[:, None], normalized, batch)


def checked_sampling_rate(rate) -> int:
    """`rate` as a whole number of Hz, or a `ValueError` saying why the extractor cannot take it (`stable-codec
    tokenize` asks before batching, so that one bad clip fails alone)."""
    if not _is_real_number(rate) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"`sampling_rate` must be a positive number of Hz, got {rate!r}.")
    if not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        raise ValueError(
            f"`sampling_rate` {rate!r} Hz is outside the supported range of {MIN_SAMPLING_RATE} to "
            f"{MAX_SAMPLING_RATE} Hz."
        )
    if rate != int(rate):
        raise ValueError(
            f"`sampling_rate` {rate!r} Hz is not a whole number: the original's resampler takes whole numbers of "
            "Hz, as audio files have; round it (the pitch changes by the rounding, at most 0.05 % at 1 kHz)."
        )
    return int(rate)


def checked_clip(clip, where: str, device: torch.device) -> torch.Tensor:
    """One clip as a float32 (num_channels, num_samples) tensor on `device`, or a `ValueError` naming `where`."""
    if clip.ndim not in (1, 2):
        raise ValueError(
            f"{where} is a {clip.ndim}-D array of shape {tuple(clip.shape)}; a clip must be 1-D (num_samples,) "
            "or 2-D (num_channels, num_samples). Pass a batch as a list of clips."
        )
    if (clip.numel() if isinstance(clip, torch.Tensor) else clip.size) == 0:
        raise ValueError(f"{where} is empty (shape {tuple(clip.shape)}).")
    if clip.ndim == 2 and clip.shape[0] > clip.shape[1]:
        raise ValueError(
            f"{where} has shape {tuple(clip.shape)}: more channels than samples. Multi-channel audio must be "
            "(num_channels, num_samples); transpose (num_samples, num_channels) arrays."
        )
    if isinstance(clip, torch.Tensor):  # floating point tensors (others went through NumPy) stay where they are
        waveform = clip.detach().to(device=device, dtype=torch.float32)
    else:
        waveform = torch.from_numpy(_to_float32(clip, where)).to(device)
    if not torch.isfinite(waveform).all():
        raise ValueError(f"{where} contains NaN or infinite samples.")
    return waveform.reshape(-1, waveform.shape[-1])


def _is_real_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_array(value):
    """Floating point torch tensors stay tensors (and on their device); everything else becomes a NumPy array."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value)


def _pad_to(signal: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(signal, (0, length - signal.shape[-1]))


def _as_clip_list(raw_audio) -> list:
    """A list (or tuple) of arrays, tensors or lists is a batch; anything else is one clip. Each clip comes back as
    a NumPy array or a floating point tensor (see _as_array)."""
    if isinstance(raw_audio, (list, tuple)):
        if len(raw_audio) == 0:
            raise ValueError("No audio given: `raw_audio` is an empty list.")
        if all(isinstance(item, (list, tuple, np.ndarray)) or hasattr(item, "detach") for item in raw_audio):
            return [_as_array(item) for item in raw_audio]
    return [_as_array(raw_audio)]


def _to_float32(clip: np.ndarray, where: str) -> np.ndarray:
    if clip.dtype in _PCM_OFFSET_AND_SCALE:
        offset, scale = _PCM_OFFSET_AND_SCALE[clip.dtype]
        return ((clip.astype(np.float64) - offset) / scale).astype(np.float32)
    if np.issubdtype(clip.dtype, np.floating):
        return clip.astype(np.float32)
    raise ValueError(
        f"{where} has samples of dtype {clip.dtype}; expected floating point in [-1, 1] or integer PCM "
        f"({', '.join(str(dtype) for dtype in _PCM_OFFSET_AND_SCALE)})."
    )


__all__ = ["StableCodecFeatureExtractor"]
