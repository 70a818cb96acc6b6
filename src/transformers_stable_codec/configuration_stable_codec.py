"""Configuration of the Stable Codec Transformer Audio AutoEncoder (TAAE)."""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils import logging

from .original_checkpoint import (
    OriginalCheckpointError,
    find_original_layout,
    original_config_kwargs,
    read_original_config,
    split_loading_kwargs,
)


logger = logging.get_logger(__name__)


# The post-hoc residual FSQ bottlenecks of the paper (Table 2), as (levels per latent dimension, scale) stages.
# Every stage quantizes the residual left by the previous ones; each emits one token per latent frame.
POSTHOC_BOTTLENECK_PRESETS: dict[str, list[tuple[list[int], float]]] = {
    "1x46656_400bps": [([6] * 6, 1.0)],
    "2x15625_700bps": [([5] * 6, 1.0), ([5] * 6, 0.25)],
    "4x729_1000bps": [([3] * 6, 1.0), ([3] * 6, 0.5), ([3] * 6, 0.25), ([3] * 6, 0.125)],
}


@strict
class StableCodecConfig(PreTrainedConfig):
    r"""
    Configuration of a [`StableCodecModel`]: the Transformer Audio AutoEncoder of "Scaling Transformers for
    Low-bitrate High-Quality Speech Coding" (Parker et al., 2024). Defaults give the paper-scale model (950M
    parameters, 16 kHz, 25 latent frames per second, 6-dimensional FSQ with 17 levels).

    The waveform is cut into patches of `patch_size` samples, embedded by a convolution, and passed through
    stages of transformer layers; stage `i` first downsamples by `strides[i]` and works at width
    `hidden_size * channel_multipliers[i]`. The decoder mirrors the encoder.

    Args:
        sampling_rate (`int`, defaults to 16000): sampling rate of the audio, in Hz.
        patch_size (`int`, defaults to 320): samples per patch of the input waveform.
        hidden_size (`int`, defaults to 256): base width; stage widths are multiples of it.
        channel_multipliers (`list[int]`, defaults to `[4, 4]`): width of each stage over `hidden_size`.
        strides (`list[int]`, defaults to `[1, 2]`): temporal downsampling of each encoder stage (upsampling in
            the decoder). A stage with stride 1 and unchanged width has no convolution.
        transformer_depths (`list[int]`, defaults to `[14, 14]`): transformer layers in each stage.
        head_dim (`int`, defaults to 128): width of each attention head; stage widths must be multiples of it.
        attention_window_left (`int`, defaults to 63): frame `i` attends to frames `i - attention_window_left` to
            `i + attention_window_right`, at every stage's own frame rate. (Not transformers' `sliding_window`, a
            symmetric or causal size: this window is asymmetric. The original's `"sliding_window": [63, 64]` and
            configs saved by earlier versions of this package are read into these two fields.)
        attention_window_right (`int`, defaults to 64): frames after frame `i` that it attends to.
        norm_eps (`float`, defaults to 1e-2): epsilon of the pre-attention and pre-feed-forward layer norms.
        qk_norm_eps (`float`, defaults to 1e-6): epsilon of the per-head query and key layer norms.
        ff_mult (`int`, defaults to 4): width of the SwiGLU feed-forward over the stage width.
        rope_theta (`float`, defaults to 10000.0): base of the rotary position embedding, which rotates the first
            `max(head_dim // 2, 32)` channels of every query and key head.
        layer_scale_init_value (`float`, defaults to 1e-2): initial LayerScale of both residual branches.
        latent_dim (`int`, defaults to 6): channels of the latent that the bottleneck quantizes.
        fsq_levels (`list[int]`, defaults to `[17] * 6`): levels of the training-time FSQ, one per latent channel.
        fsq_noise_dropout (`float`, defaults to 0.05): in training mode, the probability that a clip skips the
            dither noise (and, independently, the rounding) of the training-time FSQ.
        initializer_range (`float`, defaults to 0.02): standard deviation of the linear layers' initialization.

    Example:

    ```python
    >>> from transformers_stable_codec import StableCodecConfig, StableCodecModel

    >>> config = StableCodecConfig()  # the paper-scale model: 25 Hz latents, 1x83521 codebook
    >>> config.hop_length, config.frame_rate
    (640, 25.0)
    >>> model = StableCodecModel(config)  # random weights
    ```
    """

    model_type = "stable_codec"

    sampling_rate: int = 16000
    patch_size: int = 320
    hidden_size: int = 256
    channel_multipliers: list[int] | tuple[int, ...] = (4, 4)
    strides: list[int] | tuple[int, ...] = (1, 2)
    transformer_depths: list[int] | tuple[int, ...] = (14, 14)
    head_dim: int = 128
    attention_window_left: int = 63
    attention_window_right: int = 64
    norm_eps: float = 1e-2
    qk_norm_eps: float = 1e-6
    ff_mult: int = 4
    rope_theta: float = 10000.0
    layer_scale_init_value: float = 1e-2
    latent_dim: int = 6
    fsq_levels: list[int] | tuple[int, ...] = (17, 17, 17, 17, 17, 17)
    fsq_noise_dropout: float = 0.05
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # JSON round-trips give lists; keep one type so saved and loaded configs compare equal.
        for name in ("channel_multipliers", "strides", "transformer_depths", "fsq_levels"):
            setattr(self, name, [int(value) for value in getattr(self, name)])
        self._read_legacy_window(kwargs)
        super().__post_init__(**kwargs)

    def _read_legacy_window(self, kwargs: dict):
        """Earlier versions saved the window as `"sliding_window": [left, right]`; read it into the two fields. Any
        other `sliding_window` (transformers' generic code sets an int there) stays an attribute the model ignores."""
        window = kwargs.get("sliding_window")
        if isinstance(window, (list, tuple)):
            if len(window) != 2 or not all(isinstance(size, int) and not isinstance(size, bool) for size in window):
                raise ValueError(
                    f"`sliding_window` of a saved Stable Codec config must be a (left, right) pair of integers, got "
                    f"{window!r}."
                )
            kwargs.pop("sliding_window")
            self.attention_window_left, self.attention_window_right = window
        elif window is not None:
            logger.warning_once(
                f"`sliding_window={window!r}` is not read by Stable Codec: its asymmetric window is "
                "`attention_window_left` / `attention_window_right`."
            )

    def validate_architecture(self):
        """Checks that the fields describe a model this implementation can build and whose decoder gives back the
        input length. Run by `@strict` after construction and before `save_pretrained`."""
        super().validate_architecture()

        def fail(message):
            raise ValueError(f"Invalid StableCodecConfig: {message}")

        for name in ("sampling_rate", "patch_size", "hidden_size", "head_dim", "ff_mult", "latent_dim"):
            if getattr(self, name) <= 0:
                fail(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        num_stages = len(self.channel_multipliers)
        if num_stages == 0:
            fail("`channel_multipliers` must name at least one stage.")
        if len(self.strides) != num_stages or len(self.transformer_depths) != num_stages:
            fail(
                f"`channel_multipliers`, `strides` and `transformer_depths` must have one entry per stage, got "
                f"{len(self.channel_multipliers)}, {len(self.strides)} and {len(self.transformer_depths)}."
            )
        if any(value <= 0 for value in [*self.channel_multipliers, *self.strides]):
            fail(
                "`channel_multipliers` and `strides` must be positive, got "
                f"{self.channel_multipliers}, {self.strides}."
            )
        if any(depth < 0 for depth in self.transformer_depths):
            fail(f"`transformer_depths` must be non-negative, got {self.transformer_depths}.")
        widths = self.stage_widths
        for index, (stride, in_width, out_width) in enumerate(zip(self.strides, [widths[0]] + widths[:-1], widths)):
            # The resampling convolutions (kernel 2 * stride, padding ceil(stride / 2)) invert each other's lengths
            # only for even strides; the released checkpoints and the paper use strides (1, 2).
            if (stride > 1 and stride % 2) or (stride == 1 and in_width != out_width):
                fail(
                    f"stage {index} has stride {stride} from width {in_width} to {out_width}: strides must be even, "
                    "or 1 with the width of the stage before, for the decoder to give back the input length."
                )
        if self.head_dim < self.rotary_dim:
            fail(
                f"`head_dim` is {self.head_dim}, but RoPE rotates max(head_dim // 2, 32) = {self.rotary_dim} "
                "channels of each head (as the original does): heads need at least 32 channels."
            )
        for width in widths:
            if width % self.head_dim != 0:
                fail(f"stage width {width} is not a multiple of `head_dim` ({self.head_dim}).")
        for name in ("attention_window_left", "attention_window_right"):
            if getattr(self, name) < 0:
                fail(f"`{name}` must be a non-negative number of frames, got {getattr(self, name)}.")
        if len(self.fsq_levels) != self.latent_dim:
            fail(f"`fsq_levels` needs one level count per latent channel ({self.latent_dim}), got {self.fsq_levels}.")
        if any(levels < 2 for levels in self.fsq_levels):
            fail(f"every FSQ dimension needs at least 2 levels, got {self.fsq_levels}.")
        if not 0.0 <= self.fsq_noise_dropout <= 1.0:
            fail(f"`fsq_noise_dropout` must be a probability, got {self.fsq_noise_dropout}.")
        if self.norm_eps <= 0 or self.qk_norm_eps <= 0:
            fail("layer norm epsilons must be positive.")

    @classmethod
    def from_original_config(cls, model_config: dict, **overrides) -> "StableCodecConfig":
        """The config of an original `model_config.json` (as a dict); raises `OriginalCheckpointError` naming any
        option this implementation does not have."""
        try:
            return cls(**{**original_config_kwargs(model_config), **overrides})
        except Exception as error:  # @strict wraps our ValueError: report the cause
            cause = error.__cause__ or error
            raise OriginalCheckpointError(
                f"the original config does not describe a valid Stable Codec: {cause}"
            ) from None

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """Also reads a folder or Hub repo in the original layout (`model_config.json`, no `config.json`)."""
        layout = find_original_layout(pretrained_model_name_or_path, **kwargs)
        if layout is None:
            return super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        config = cls.from_original_config(read_original_config(layout.model_config_path))
        return config.to_dict(), split_loading_kwargs(kwargs)[1]

    @property
    def attention_window(self) -> tuple[int, int]:
        """`(left, right)` frames of the sliding window."""
        return self.attention_window_left, self.attention_window_right

    @property
    def stage_widths(self) -> list[int]:
        """Width of each encoder stage (the decoder visits them in reverse)."""
        return [self.hidden_size * multiplier for multiplier in self.channel_multipliers]

    @property
    def rotary_dim(self) -> int:
        """Channels of each head that RoPE rotates (the rest pass through unrotated), as in the original."""
        return max(self.head_dim // 2, 32)

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return self.patch_size * math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Latent frames (token steps) per second."""
        return self.sampling_rate / self.hop_length

    @property
    def codebook_size(self) -> int:
        """Number of distinct tokens of the training-time FSQ."""
        return math.prod(self.fsq_levels)


__all__ = ["POSTHOC_BOTTLENECK_PRESETS", "StableCodecConfig"]
