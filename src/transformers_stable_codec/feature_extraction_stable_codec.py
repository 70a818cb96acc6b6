"""Feature extractor for Stable Codec: raw audio of any rate, layout and sample format to the model's 16 kHz mono input,
loudness-normalized as the original does before encoding."""

import math
import numbers

import numpy as np
import pyloudnorm
import soxr
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import TensorType, logging

from .original_checkpoint import find_original_layout, original_config_kwargs, read_original_config, split_loading_kwargs


logger = logging.get_logger(__name__)

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
    Prepares raw audio for [`StableCodecModel`]: mixes it down to mono, resamples it to `sampling_rate` (with
    libsoxr, through the `soxr` package), normalizes its loudness to `target_loudness` LUFS as the original Stable Codec
    does before encoding (ITU-R BS.1770-4 gated loudness, measured with `pyloudnorm`), and pads the batch to a common
    length that is a multiple of `hop_length`.

    Accepted audio, for one clip or for each clip of a list:

    - a 1-D array `(num_samples,)`: mono;
    - a 2-D array `(num_channels, num_samples)`: channels first, as torchaudio and `datasets` give them (transpose
      the `(num_samples, num_channels)` arrays of soundfile); the channels are averaged;
    - NumPy arrays, torch tensors or nested lists; floating point samples in [-1, 1], or integer PCM (`int8`,
      `int16`, `int32`, `uint8`), scaled to [-1, 1).

    A list of clips is a batch; a single 2-D array is always one multi-channel clip.

    Loudness normalization follows the original's `VolumeNorm([-20, 0])`: the loudness of the clip (zero-padded to
    whole latent frames, as the original measures it) is brought to `target_loudness`; a clip whose mean square is
    below 1e-6 (silence) keeps its level; if the gain would push a sample past full scale, the clip is scaled so that
    its peak is 0.95. Clips shorter than one 400 ms gating block, and clips with no block above the -70 LUFS absolute
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
        sampling_rate: float | None = None,
        return_tensors: str | TensorType | None = None,
    ) -> BatchFeature:
        """
        Prepares one clip or a batch of clips.

        Args:
            raw_audio (`np.ndarray`, `torch.Tensor`, `list[float]`, or a list of those):
                One clip, or a list of clips; see the class docstring for the accepted layouts and sample formats.
            sampling_rate (`float`, *optional*):
                Sampling rate of `raw_audio` in Hz (any positive number; audio is resampled to
                `self.sampling_rate`). If omitted, the audio is assumed to be at `self.sampling_rate`.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for torch tensors, `"np"` for NumPy arrays; lists of arrays if omitted.

        Returns:
            [`BatchFeature`] with `input_values` of shape `(batch_size, 1, num_samples)` (float32, `num_samples` a
            multiple of `hop_length`) and `padding_mask` of shape `(batch_size, num_samples)` (1 for audio, 0 for
            padding), ready for `StableCodecModel.encode(**features)`.
        """
        if sampling_rate is None:
            logger.warning_once(
                f"No `sampling_rate` given to {self.__class__.__name__}: assuming the audio is at "
                f"{self.sampling_rate} Hz. Pass `sampling_rate` to have other rates resampled."
            )
            sampling_rate = self.sampling_rate
        elif not _is_real_number(sampling_rate) or not math.isfinite(sampling_rate) or sampling_rate <= 0:
            raise ValueError(f"`sampling_rate` must be a positive number of Hz, got {sampling_rate!r}.")

        clips = [self._prepare_clip(clip, index, sampling_rate) for index, clip in enumerate(_as_clip_list(raw_audio))]
        padded = self.pad(
            BatchFeature({"input_values": clips}),
            padding="longest",
            pad_to_multiple_of=self.hop_length,
            return_attention_mask=True,
        )
        features = BatchFeature(
            {
                "input_values": [values[None, :] for values in padded["input_values"]],
                "padding_mask": padded["attention_mask"],
            }
        )
        return features.convert_to_tensors(return_tensors) if return_tensors is not None else features

    def _prepare_clip(self, clip: np.ndarray, index: int, sampling_rate: float) -> np.ndarray:
        """Checks one clip and returns it as float32 mono at `self.sampling_rate`, normalized if enabled."""
        where = f"clip {index}"
        if clip.ndim not in (1, 2):
            raise ValueError(
                f"{where} is a {clip.ndim}-D array of shape {clip.shape}; a clip must be 1-D (num_samples,) or 2-D "
                "(num_channels, num_samples). Pass a batch as a list of clips."
            )
        if clip.size == 0:
            raise ValueError(f"{where} is empty (shape {clip.shape}).")
        if clip.ndim == 2 and clip.shape[0] > clip.shape[1]:
            raise ValueError(
                f"{where} has shape {clip.shape}: more channels than samples. Multi-channel audio must be "
                "(num_channels, num_samples); transpose (num_samples, num_channels) arrays."
            )
        waveform = _to_float64(clip, where)
        if not np.isfinite(waveform).all():
            raise ValueError(f"{where} contains NaN or infinite samples.")
        if waveform.ndim == 2:
            waveform = waveform.mean(axis=0)
        if sampling_rate != self.sampling_rate:
            waveform = soxr.resample(waveform, sampling_rate, self.sampling_rate)
        if self.normalize_loudness:
            waveform = self._normalize_loudness(waveform)
        return waveform.astype(np.float32)

    def _normalize_loudness(self, waveform: np.ndarray) -> np.ndarray:
        # The original measures the clip after padding it to whole latent frames; the padding changes the mean
        # square and the last gating blocks, so measure the same signal.
        measured_length = -(-len(waveform) // self.hop_length) * self.hop_length
        padded = np.pad(waveform, (0, measured_length - len(waveform)))
        if np.mean(padded**2) < SILENCE_MEAN_SQUARE:
            return waveform
        meter = pyloudnorm.Meter(self.sampling_rate)
        if measured_length < meter.block_size * self.sampling_rate:
            logger.warning_once(
                "Clips shorter than one 400 ms BS.1770 gating block have no integrated loudness: left unnormalized."
            )
            return waveform
        loudness = meter.integrated_loudness(padded)
        if not math.isfinite(loudness):
            return waveform
        normalized = waveform * 10.0 ** ((self.target_loudness - loudness) / 20.0)
        peak = np.abs(normalized).max()
        if peak > 1.0:
            normalized = normalized * (PROTECTED_PEAK / peak)
        return normalized


def _is_real_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (NumPy has no bfloat16: widen it)
        value = value.detach().cpu()
        value = (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.asarray(value)


def _as_clip_list(raw_audio) -> list[np.ndarray]:
    """A list (or tuple) of arrays, tensors or lists is a batch; anything else is one clip."""
    if isinstance(raw_audio, (list, tuple)):
        if len(raw_audio) == 0:
            raise ValueError("No audio given: `raw_audio` is an empty list.")
        if all(isinstance(item, (list, tuple, np.ndarray)) or hasattr(item, "detach") for item in raw_audio):
            return [_as_array(item) for item in raw_audio]
    return [_as_array(raw_audio)]


def _to_float64(clip: np.ndarray, where: str) -> np.ndarray:
    if clip.dtype in _PCM_OFFSET_AND_SCALE:
        offset, scale = _PCM_OFFSET_AND_SCALE[clip.dtype]
        return (clip.astype(np.float64) - offset) / scale
    if np.issubdtype(clip.dtype, np.floating):
        return clip.astype(np.float64)
    raise ValueError(
        f"{where} has samples of dtype {clip.dtype}; expected floating point in [-1, 1] or integer PCM "
        f"({', '.join(str(dtype) for dtype in _PCM_OFFSET_AND_SCALE)})."
    )


__all__ = ["StableCodecFeatureExtractor"]
