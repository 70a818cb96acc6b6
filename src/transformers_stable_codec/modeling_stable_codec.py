"""PyTorch Stable Codec: the Transformer Audio AutoEncoder (TAAE) of arXiv 2411.19842 with its FSQ bottlenecks.

Reads top to bottom: outputs, rotary embedding, attention, transformer layer, encoder and decoder stages, the FSQ
bottlenecks, then the pretrained-model base and the model itself.
"""

import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from torch.nn.utils import parametrize
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedAudioTokenizerBase
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging

from .configuration_stable_codec import POSTHOC_BOTTLENECK_PRESETS, StableCodecConfig
from .original_checkpoint import (
    ORIGINAL_WEIGHT_FILES,
    OriginalCheckpointError,
    convert_original_state_dict,
    find_original_layout,
    load_original_weights,
    read_original_config,
    split_loading_kwargs,
)
from .quantization import check_device, loading_device, requested_quantization


logger = logging.get_logger(__name__)

PosthocBottleneck = str | Sequence[tuple[Sequence[int], float]] | None


@dataclass
class StableCodecEncoderOutput(ModelOutput):
    r"""
    audio_codes (`torch.LongTensor` of shape `(batch_size, tokens_per_step, frames)`):
        Token indices: one per frame for the training-time FSQ, one per stage and frame for a post-hoc bottleneck.
    latents (`torch.FloatTensor` of shape `(batch_size, latent_dim, frames)`):
        Pre-bottleneck latents (before tanh and quantization), the input of the CTC phoneme head.
    audio_codes_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
        1 for frames that hold audio, 0 for frames that only hold padding (given when `padding_mask` was).
    """

    audio_codes: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    audio_codes_mask: torch.LongTensor | None = None


@dataclass
class StableCodecDecoderOutput(ModelOutput):
    r"""
    audio_values (`torch.FloatTensor` of shape `(batch_size, 1, frames * hop_length)`):
        Decoded waveform.
    """

    audio_values: torch.FloatTensor | None = None


@dataclass
class StableCodecOutput(ModelOutput):
    r"""
    audio_values (`torch.FloatTensor` of shape `(batch_size, 1, sequence_length)`):
        Reconstructed waveform, cropped to the input length.
    audio_codes (`torch.LongTensor` of shape `(batch_size, tokens_per_step, frames)`):
        Token indices of the chosen bottleneck.
    latents (`torch.FloatTensor` of shape `(batch_size, latent_dim, frames)`):
        Pre-bottleneck latents.
    quantized_latents (`torch.FloatTensor` of shape `(batch_size, latent_dim, frames)`):
        What the decoder received: the quantized latents (in training mode, the dithered ones).
    audio_codes_mask (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*):
        1 for frames that hold audio, 0 for padding frames.
    """

    audio_values: torch.FloatTensor | None = None
    audio_codes: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized_latents: torch.FloatTensor | None = None
    audio_codes_mask: torch.LongTensor | None = None


def weight_normed(conv: nn.Module) -> nn.Module:
    """Weight normalization as the original applies it (magnitude per output row, dim 0)."""
    return nn.utils.parametrizations.weight_norm(conv, name="weight", dim=0)


@torch.library.custom_op("transformers_stable_codec::rotary_cos_sin", mutates_args=())
def rotary_cos_sin(inv_freq: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos and sin of the angles `position * inv_freq`, each `(num_frames, 2 * len(inv_freq))`.

    The angles are computed in float64 (exact products of the float32 frequencies), unlike the original's float32:
    a float32 angle near 1.8e5 rad (an hour at 50 Hz) is resolved only to 0.016 rad, so rotations would drift with
    absolute position, and long signals would lose accuracy that chunked coding keeps.

    A custom op, so that `torch.compile` keeps the table as one buffer per stage: as plain tensor code it depends on
    indices only, and inductor recomputes such code inside every consumer, here float64 cosines for every element
    of every layer's queries and keys (a sixth of the compiled model's GPU time at paper scale)."""
    positions = torch.arange(num_frames, device=inv_freq.device, dtype=torch.float64)
    angles = torch.outer(positions, inv_freq.double())
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float(), angles.sin().float()


@rotary_cos_sin.register_fake
def _(inv_freq: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (num_frames, 2 * inv_freq.shape[0])
    return inv_freq.new_empty(shape, dtype=torch.float32), inv_freq.new_empty(shape, dtype=torch.float32)


class StableCodecRotaryEmbedding(nn.Module):
    """RoPE on the first `rotary_dim` channels of each head, positions counted from 0 at every stage."""

    def __init__(self, config: StableCodecConfig):
        super().__init__()
        self.rotary_dim = config.rotary_dim
        self.rope_theta = config.rope_theta

    def inv_freq(self, device=None) -> torch.Tensor:
        """The original's float32 frequencies. Not a buffer: `model.to(torch.bfloat16)` would round a buffer to
        bfloat16, turning the rotations by up to 0.1 rad across the window."""
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32, device=device) / self.rotary_dim
        return 1.0 / (self.rope_theta**exponents)

    def forward(self, num_frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 `(cos, sin)`, each `(num_frames, rotary_dim)`: see `rotary_cos_sin`."""
        return rotary_cos_sin(self.inv_freq(device), num_frames)


def rotate_half(states: torch.Tensor) -> torch.Tensor:
    first, second = states.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_partial_rotary_pos_emb(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the leading `cos.shape[-1]` channels in float32 (as the original does), passes the rest through."""
    rotary_dim = cos.shape[-1]
    rotated, passed = states[..., :rotary_dim].float(), states[..., rotary_dim:]
    rotated = rotated * cos + rotate_half(rotated) * sin
    return torch.cat((rotated.to(states.dtype), passed), dim=-1)


def sliding_window_mask_function(left: int, right: int, frame_is_valid: torch.Tensor | None) -> Callable:
    """Query `q` sees keys `q - left .. q + right` that hold audio; padding queries see their window unmasked, so
    that no row is empty (their outputs are discarded)."""

    def mask_function(batch_idx, head_idx, q_idx, kv_idx):
        in_window = (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)
        if frame_is_valid is None:
            return in_window
        return in_window & (frame_is_valid[batch_idx, kv_idx] | ~frame_is_valid[batch_idx, q_idx])

    return mask_function


def sliding_window_block_mask(
    num_frames: int, left: int, right: int, mask_function: Callable, device: torch.device, block_size: int = 128
) -> BlockMask:
    """Flex attention's block-sparse mask for the window, from block bounds alone: query block `i` meets the key
    blocks that overlap frames `i * block_size - left .. (i + 1) * block_size - 1 + right`, and `mask_function`
    cuts the window's edges and padding inside them. Index arithmetic on (blocks x blocks) integers, so it compiles
    into the encode / decode graphs, where torch 2.11's `create_block_mask` made flex's kernel fault at paper scale
    (illegal memory access). One mask for the whole batch: `mask_function` reads each clip's padding itself."""
    blocks = torch.arange(-(-num_frames // block_size), device=device)
    query_blocks, key_blocks = blocks[:, None], blocks[None, :]
    overlaps = (key_blocks * block_size <= (query_blocks + 1) * block_size - 1 + right) & (
        (key_blocks + 1) * block_size - 1 >= query_blocks * block_size - left
    )
    kv_num_blocks = overlaps.sum(dim=-1, dtype=torch.int32)
    # Each row lists its overlapping key blocks first, in order: a stable sort of the "does not overlap" flags.
    kv_indices = torch.argsort((~overlaps).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return BlockMask.from_kv_blocks(
        kv_num_blocks[None, None],
        kv_indices[None, None],
        BLOCK_SIZE=block_size,
        mask_mod=mask_function,
        seq_lengths=(num_frames, num_frames),
    )


@dataclass
class LocalAttentionBlocks:
    """Exact sliding-window attention in memory linear in length, for the eager and sdpa backends: queries are cut
    into blocks of `block_size` frames, and each block attends to its own slice of `block_size + left + right` keys,
    so no (frames x frames) mask or score matrix is ever formed. Blocks become extra batch entries of the shared
    attention interface. Flex attention (block-sparse masks) and flash attention (native windows) need none of it."""

    num_frames: int
    block_size: int
    left: int
    right: int

    @classmethod
    def for_sequence(cls, num_frames: int, left: int, right: int) -> "LocalAttentionBlocks | None":
        """Blocks of about the window's size (in multiples of 64 frames, the kernels' tile), when the sequence is long
        enough for them to save work: a query then meets `block_size + left + right` keys instead of all frames."""
        block_size = 64 * math.ceil((left + right + 1) / 64)
        return cls(num_frames, block_size, left, right) if num_frames > block_size + left + right else None

    @property
    def num_blocks(self) -> int:
        return -(-self.num_frames // self.block_size)

    @property
    def key_length(self) -> int:
        return self.block_size + self.left + self.right

    def split_queries(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, heads, frames, dim) -> (batch * blocks, heads, block_size, dim)."""
        batch, heads, frames, dim = states.shape
        states = nn.functional.pad(states, (0, 0, 0, self.num_blocks * self.block_size - frames))
        states = states.view(batch, heads, self.num_blocks, self.block_size, dim).transpose(1, 2)
        return states.reshape(batch * self.num_blocks, heads, self.block_size, dim)

    def split_keys(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, heads, frames, dim) -> (batch * blocks, heads, key_length, dim): block b gets keys
        b * block_size - left .. (b + 1) * block_size + right - 1 (zeros outside the sequence)."""
        batch, heads, frames, dim = states.shape
        padding = (0, 0, self.left, self.num_blocks * self.block_size - frames + self.right)
        windows = nn.functional.pad(states, padding).unfold(2, self.key_length, self.block_size)
        return windows.permute(0, 2, 1, 4, 3).reshape(batch * self.num_blocks, heads, self.key_length, dim)

    def merge(self, attn_output: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The interface's (batch * blocks, block_size, heads, dim) back to (batch, frames, heads, dim)."""
        merged = attn_output.reshape(batch_size, self.num_blocks * self.block_size, *attn_output.shape[2:])
        return merged[:, : self.num_frames]

    def mask_function(self, frame_is_valid: torch.Tensor | None) -> Callable:
        """The window of `sliding_window_mask_function`, in block coordinates."""
        num_blocks, block_size, left, right, num_frames = (
            self.num_blocks,
            self.block_size,
            self.left,
            self.right,
            self.num_frames,
        )

        def mask_function(batch_idx, head_idx, q_idx, kv_idx):
            block, clip = batch_idx % num_blocks, batch_idx // num_blocks
            query, key = block * block_size + q_idx, block * block_size - left + kv_idx
            allowed = (kv_idx >= q_idx) & (kv_idx <= q_idx + left + right) & (key >= 0) & (key < num_frames)
            # Queries past the end see their own (zero) position, so that no row is empty: empty rows give NaN.
            allowed = allowed | ((query >= num_frames) & (kv_idx == q_idx + left))
            if frame_is_valid is None:
                return allowed
            key_valid = frame_is_valid[clip, key.clamp(0, num_frames - 1)]
            query_valid = frame_is_valid[clip, query.clamp(0, num_frames - 1)]
            return allowed & (key_valid | ~query_valid)

        return mask_function


@dataclass
class StableCodecAttentionLayout:
    """What every layer of a stage shares: the backend's mask, the query blocks (if any) and the valid frames."""

    attention_mask: object = None
    blocks: LocalAttentionBlocks | None = None
    frame_is_valid: torch.Tensor | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def windowed_flash_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    frame_is_valid: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Flash attention (flash-attn 2's kernels, or FlashAttention-4's `flash_attn.cute`, which share this API) with the
    asymmetric `(left, right)` window, which transformers' symmetric `sliding_window` cannot express. Padding is
    handled by packing each clip's valid frames (variable-length kernel)."""
    from transformers.modeling_flash_attention_utils import lazy_import_flash_attention

    if query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"{module.config._attn_implementation} computes in float16/bfloat16 only, but the model runs in "
            f"{query.dtype}. Load it with `dtype=torch.bfloat16`, or use `attn_implementation='sdpa'` or "
            "'flex_attention' for exact float32."
        )
    flash_fn, flash_varlen_fn = lazy_import_flash_attention(module.config._attn_implementation)[0][:2]
    window = module.config.attention_window
    query, key, value = (states.transpose(1, 2) for states in (query, key, value))  # (batch, frames, heads, dim)
    if frame_is_valid is None:
        return attention_output(flash_fn(query, key, value, softmax_scale=scaling, causal=False, window_size=window))

    lengths = frame_is_valid.sum(dim=-1, dtype=torch.int32)
    cu_seqlens = nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    max_length = int(lengths.max())
    packed = flash_varlen_fn(
        query[frame_is_valid],
        key[frame_is_valid],
        value[frame_is_valid],
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_k=cu_seqlens,
        max_seqlen_q=max_length,
        max_seqlen_k=max_length,
        softmax_scale=scaling,
        causal=False,
        window_size=window,
    )
    output = query.new_zeros(query.shape)
    output[frame_is_valid] = attention_output(packed)
    return output


def attention_output(result):
    """FlashAttention-4's kernels return `(output, log-sum-exp)`, flash-attn 2's the output alone."""
    return result[0] if isinstance(result, tuple) else result


class StableCodecAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection, per-head QK LayerNorm, partial RoPE and an asymmetric
    sliding window, dispatched through transformers' attention interface."""

    def __init__(self, config: StableCodecConfig, width: int, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = width // config.head_dim
        self.scaling = config.head_dim**-0.5
        self.is_causal = False
        self.qkv_proj = nn.Linear(width, 3 * width, bias=False)
        self.q_norm = nn.LayerNorm(config.head_dim, eps=config.qk_norm_eps)
        self.k_norm = nn.LayerNorm(config.head_dim, eps=config.qk_norm_eps)
        self.o_proj = nn.Linear(width, width, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        layout: StableCodecAttentionLayout,
    ) -> torch.Tensor:
        batch_size, num_frames, width = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, num_frames, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.transpose(1, 3).unbind(dim=2)  # each (batch, heads, frames, head_dim)
        query, key = self.q_norm(query), self.k_norm(key)
        cos, sin = position_embeddings
        query = apply_partial_rotary_pos_emb(query, cos, sin)
        key = apply_partial_rotary_pos_emb(key, cos, sin)

        implementation = self.config._attn_implementation
        if implementation == "flex_attention" and query.device.type == "cpu":
            # torch's inductor emits C++ that fails to compile for CPU flex attention once lengths vary (every
            # stage and clip has its own) or in reduced precision; sdpa computes the same window on CPU.
            raise ValueError("flex_attention runs on CUDA devices only; use attn_implementation='sdpa' on CPU.")
        if implementation.startswith("flash_attention"):
            attn_output = windowed_flash_attention_forward(
                self, query, key, value, layout.frame_is_valid, self.scaling
            )
        else:
            blocks = layout.blocks
            if blocks is not None:
                query, key, value = blocks.split_queries(query), blocks.split_keys(key), blocks.split_keys(value)
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
            attn_output, _ = attention_interface(
                self, query, key, value, layout.attention_mask, scaling=self.scaling, dropout=0.0, is_causal=False
            )
            if blocks is not None:
                attn_output = blocks.merge(attn_output, batch_size)
        return self.o_proj(attn_output.reshape(batch_size, num_frames, width))


class StableCodecLayerScale(nn.Module):
    def __init__(self, width: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.scale = nn.Parameter(torch.full((width,), init_value))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.scale


class StableCodecFeedForward(nn.Module):
    """SwiGLU: the input projection yields value and gate halves; the output is `value * silu(gate)` projected."""

    def __init__(self, config: StableCodecConfig, width: int):
        super().__init__()
        inner_width = width * config.ff_mult
        self.input_proj = nn.Linear(width, 2 * inner_width)
        self.output_proj = nn.Linear(inner_width, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        value, gate = self.input_proj(hidden_states).chunk(2, dim=-1)
        return self.output_proj(value * nn.functional.silu(gate))


class StableCodecTransformerLayer(GradientCheckpointingLayer):
    """Pre-norm block: `x + LayerScale(Attention(LN(x)))`, then `x + LayerScale(SwiGLU(LN(x)))`."""

    def __init__(self, config: StableCodecConfig, width: int, layer_idx: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width, eps=config.norm_eps, bias=False)
        self.attention = StableCodecAttention(config, width, layer_idx)
        self.attention_scale = StableCodecLayerScale(width, config.layer_scale_init_value)
        self.feed_forward_norm = nn.LayerNorm(width, eps=config.norm_eps, bias=False)
        self.feed_forward = StableCodecFeedForward(config, width)
        self.feed_forward_scale = StableCodecLayerScale(width, config.layer_scale_init_value)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        layout: StableCodecAttentionLayout,
    ) -> torch.Tensor:
        attended = self.attention(self.attention_norm(hidden_states), position_embeddings, layout)
        hidden_states = hidden_states + self.attention_scale(attended)
        return hidden_states + self.feed_forward_scale(self.feed_forward(self.feed_forward_norm(hidden_states)))


class StableCodecTransformer(nn.Module):
    """The transformer layers of one stage, on channels-first hidden states `(batch, width, frames)`."""

    def __init__(self, config: StableCodecConfig, width: int, depth: int, first_layer_idx: int):
        super().__init__()
        self.config = config
        self.rotary_emb = StableCodecRotaryEmbedding(config)
        self.layers = nn.ModuleList(
            StableCodecTransformerLayer(config, width, first_layer_idx + index) for index in range(depth)
        )

    def forward(self, hidden_states: torch.Tensor, frame_is_valid: torch.Tensor | None) -> torch.Tensor:
        if len(self.layers) == 0:
            return hidden_states
        hidden_states = hidden_states.transpose(1, 2)
        position_embeddings = self.rotary_emb(hidden_states.shape[1], hidden_states.device)
        layout = self.attention_layout(hidden_states, frame_is_valid)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, layout)
        return hidden_states.transpose(1, 2)

    def attention_layout(
        self, hidden_states: torch.Tensor, frame_is_valid: torch.Tensor | None
    ) -> StableCodecAttentionLayout:
        implementation = self.config._attn_implementation
        if implementation.startswith("flash_attention"):
            return StableCodecAttentionLayout(frame_is_valid=frame_is_valid)
        batch_size, num_frames, _ = hidden_states.shape
        left, right = self.config.attention_window
        if implementation == "flex_attention":
            # Not transformers' builder: its `create_block_mask(_compile=True)` warns, which breaks a compiled graph.
            mask_function = sliding_window_mask_function(left, right, frame_is_valid)
            block_mask = sliding_window_block_mask(num_frames, left, right, mask_function, hidden_states.device)
            return StableCodecAttentionLayout(block_mask, frame_is_valid=frame_is_valid)
        blocks = LocalAttentionBlocks.for_sequence(num_frames, left, right)
        if blocks is None:
            queries, keys = hidden_states, None
            mask_function = sliding_window_mask_function(left, right, frame_is_valid)
        else:
            # Only shapes, dtype and device of these are read.
            queries = hidden_states.new_empty(batch_size * blocks.num_blocks, blocks.block_size, 0)
            keys = hidden_states.new_empty(batch_size * blocks.num_blocks, blocks.key_length, 0)
            mask_function = blocks.mask_function(frame_is_valid)
        attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=queries,
            attention_mask=None,
            encoder_hidden_states=keys,
            and_mask_function=mask_function,
        )
        if implementation == "sdpa" and attention_mask is not None and attention_mask.dtype == torch.bool:
            # sdpa turns a boolean mask into an additive bias on every call; every layer of the stage shares one.
            bias = torch.zeros(attention_mask.shape, dtype=hidden_states.dtype, device=hidden_states.device)
            attention_mask = bias.masked_fill_(~attention_mask, torch.finfo(hidden_states.dtype).min)
        return StableCodecAttentionLayout(attention_mask, blocks, frame_is_valid)


def mask_padding(hidden_states: torch.Tensor, frame_is_valid: torch.Tensor | None) -> torch.Tensor:
    """Zeroes padding frames, so that convolutions see what they would see at the end of a clip alone."""
    if frame_is_valid is None:
        return hidden_states
    return hidden_states * frame_is_valid[:, None, :].to(hidden_states.dtype)


class StableCodecEncoderStage(nn.Module):
    """Optional strided convolution (kernel 2*stride), then transformer layers at the new frame rate."""

    def __init__(
        self, config: StableCodecConfig, in_width: int, out_width: int, stride: int, depth: int, first_layer_idx: int
    ):
        super().__init__()
        self.stride = stride
        self.downsample = None
        if stride > 1 or in_width != out_width:
            self.downsample = weight_normed(
                nn.Conv1d(in_width, out_width, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))
            )
        self.transformer = StableCodecTransformer(config, out_width, depth, first_layer_idx)

    def forward(self, hidden_states: torch.Tensor, frame_is_valid: torch.Tensor | None) -> torch.Tensor:
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return self.transformer(hidden_states, frame_is_valid)


class StableCodecDecoderStage(nn.Module):
    """Transformer layers, then an optional transposed convolution (kernel 2*stride) that upsamples."""

    def __init__(
        self, config: StableCodecConfig, in_width: int, out_width: int, stride: int, depth: int, first_layer_idx: int
    ):
        super().__init__()
        self.stride = stride
        self.transformer = StableCodecTransformer(config, in_width, depth, first_layer_idx)
        self.upsample = None
        if stride > 1 or in_width != out_width:
            self.upsample = weight_normed(
                nn.ConvTranspose1d(
                    in_width, out_width, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
                )
            )

    def forward(self, hidden_states: torch.Tensor, frame_is_valid: torch.Tensor | None) -> torch.Tensor:
        hidden_states = self.transformer(hidden_states, frame_is_valid)
        if self.upsample is not None:
            hidden_states = self.upsample(mask_padding(hidden_states, frame_is_valid))
        return hidden_states


def input_span(steps: Sequence[nn.Module], first: int, last: int) -> tuple[int, int]:
    """The span of input frames on which output frames `first` to `last` of `steps` (applied in order) depend.

    Walks the steps backwards: a convolution output `o` reads inputs `o * stride - padding` plus its dilated kernel,
    a transposed convolution output `o` is written by the inputs `i` with `o = i * stride - padding + tap`, and every
    transformer layer reaches `left` frames back and `right` ahead (the sliding window). Nothing else mixes frames."""
    for step in reversed(steps):
        if isinstance(step, (nn.Conv1d, nn.ConvTranspose1d)):
            stride, padding = step.stride[0], step.padding[0]
            reach = step.dilation[0] * (step.kernel_size[0] - 1)
            if isinstance(step, nn.Conv1d):
                first, last = first * stride - padding, last * stride - padding + reach
            else:
                first, last = -((reach - padding - first) // stride), (last + padding) // stride
        elif isinstance(step, StableCodecTransformer):
            left, right = step.config.attention_window
            first, last = first - left * len(step.layers), last + right * len(step.layers)
        else:
            raise TypeError(f"No receptive field rule for {type(step).__name__}.")
    return first, last


def frame_masks(frames_valid: torch.Tensor | None, lengths: Sequence[int], factors: Sequence[int]) -> list:
    """Boolean (batch, length) masks of the frames that hold audio at each resolution; `factors` give how many
    frames of that resolution one latent frame spans. None when nothing is padded."""
    if frames_valid is None:
        return [None] * len(lengths)
    return [
        torch.arange(length, device=frames_valid.device)[None, :] < (frames_valid[:, None] * factor)
        for length, factor in zip(lengths, factors)
    ]


def run_in_chunks(
    coder: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    inputs: torch.Tensor,
    frames_valid: torch.Tensor | None,
    chunk_frames: int,
    context: tuple[int, int],
    steps_per_frame: tuple[int, int],
    description: str,
) -> torch.Tensor:
    """`coder(inputs, frames_valid)` computed on chunks of `chunk_frames` latent frames, each read together with
    `context = (left, right)` latent frames around it (fewer at the signal's ends), of which only the chunk's own
    frames of output are kept. `steps_per_frame` gives the input and output steps (samples or latent frames) of one
    latent frame. With a context of at least the coder's receptive field, the result is the unchunked one up to float
    rounding, while the coder never holds more than `chunk_frames + left + right` frames of activations."""
    steps_in, steps_out = steps_per_frame
    num_frames = inputs.shape[-1] // steps_in
    left, right = context
    starts = range(0, num_frames, chunk_frames)
    # transformers' models keep quiet in forward: the bar shows only at verbosity INFO or more.
    quiet = len(starts) == 1 or logging.get_verbosity() > logging.INFO
    outputs = []
    for start in logging.tqdm(starts, desc=description, unit="chunk", disable=quiet):
        stop = min(start + chunk_frames, num_frames)
        first, last = max(0, start - left), min(num_frames, stop + right)
        chunk_valid = None
        if frames_valid is not None:
            chunk_valid = (frames_valid - first).clamp(0, last - first)
            if int(chunk_valid.min()) == last - first:
                chunk_valid = None  # no padding in this chunk
        output = coder(inputs[..., first * steps_in : last * steps_in], chunk_valid)
        outputs.append(output[..., (start - first) * steps_out : (stop - first) * steps_out])
    return torch.cat(outputs, dim=-1)


def run_as_stream(
    coder: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    input_chunks: Iterable[torch.Tensor],
    steps_per_frame: tuple[int, int],
    context_frames: int,
    lookahead_frames: int,
    step_frames: int,
    fixed_shape: bool = False,
) -> Iterator[torch.Tensor]:
    """`coder` over a signal that arrives in chunks of any size: yields the output of `step_frames` latent frames
    at a time, as soon as `lookahead_frames` frames past them have arrived, computed on a window of the
    `context_frames` frames before them (fewer at the start), the step and the lookahead; at the end of the inputs,
    the rest in one call on whatever follows it (the signal's true end). Between the first `context_frames /
    step_frames` steps and the end, every call sees exactly `context_frames + step_frames + lookahead_frames` frames,
    so that compiled graphs and CUDA graphs are reused. With the coder's receptive field as context and lookahead,
    the output is `coder` on the whole signal up to float rounding (the windows of `run_in_chunks`); with less, every
    step is what the truncated window gives, as if the signal ended (or began) at its edges. `steps_per_frame` gives
    the input and output steps of one latent frame; a last, partial frame of input is zero-padded, as `encode`
    pads.

    With `fixed_shape`, every call sees exactly that many frames and a `frames_valid` tensor: the shorter windows
    of the warm-up and the end are padded on the right with frames marked as padding, which the coder treats as
    the end of a shorter clip (the same output up to float rounding), so that one compiled graph serves the whole
    stream."""
    steps_in, steps_out = steps_per_frame
    window_frames = context_frames + step_frames + lookahead_frames
    buffer, buffer_start, next_frame = None, 0, 0  # `buffer` holds the inputs from frame `buffer_start` on

    def window(stop: int, last: int) -> torch.Tensor:
        """The output of frames `next_frame` to `stop`, from the inputs of `next_frame - context` to `last`."""
        first = max(0, next_frame - context_frames)
        inputs = buffer[..., (first - buffer_start) * steps_in : (last - buffer_start) * steps_in]
        frames_valid = None
        if fixed_shape:
            frames_valid = torch.full((inputs.shape[0],), last - first, dtype=torch.long, device=inputs.device)
            inputs = nn.functional.pad(inputs, (0, (window_frames - (last - first)) * steps_in))
        output = coder(inputs, frames_valid)
        # A copy: a slice would keep the whole window's output alive, and a CUDA graph's next replay overwrites it.
        return output[..., (next_frame - first) * steps_out : (stop - first) * steps_out].clone()

    for chunk in input_chunks:
        buffer = chunk if buffer is None else torch.cat([buffer, chunk], dim=-1)
        received = buffer_start + buffer.shape[-1] // steps_in
        while next_frame + step_frames + lookahead_frames <= received:
            stop = next_frame + step_frames
            yield window(stop, stop + lookahead_frames)
            next_frame = stop
            # Inputs before the next window's context are never read again: memory stays bounded by the window.
            dropped = max(0, next_frame - context_frames) - buffer_start
            buffer, buffer_start = buffer[..., dropped * steps_in :], buffer_start + dropped
    if buffer is None:
        return
    partial = -buffer.shape[-1] % steps_in
    if partial:
        buffer = nn.functional.pad(buffer, (0, partial))
    total = buffer_start + buffer.shape[-1] // steps_in
    if next_frame < total:
        yield window(total, total)


# `torch.compile` modes a stream accepts; "reduce-overhead" and "max-autotune" replay CUDA graphs.
STREAM_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _without_gradients(stream: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """`stream` advanced under `torch.no_grad`: a generator runs at each `next`, outside the caller's context."""
    while True:
        with torch.no_grad():
            item = next(stream, None)
        if item is None:
            return
        yield item


class StableCodecEncoder(nn.Module):
    """Waveform `(batch, 1, samples)` to pre-bottleneck latents `(batch, latent_dim, frames)`."""

    def __init__(self, config: StableCodecConfig):
        super().__init__()
        self.patch_size = config.patch_size
        widths = config.stage_widths
        self.input_conv = weight_normed(nn.Conv1d(config.patch_size, widths[0], kernel_size=7, padding=3))
        layer_idx, stages = 0, []
        for in_width, out_width, stride, depth in zip(
            [widths[0]] + widths[:-1], widths, config.strides, config.transformer_depths
        ):
            stages.append(StableCodecEncoderStage(config, in_width, out_width, stride, depth, layer_idx))
            layer_idx += depth
        self.stages = nn.ModuleList(stages)
        self.output_conv = weight_normed(nn.Conv1d(widths[-1], config.latent_dim, kernel_size=3, padding=1))
        # Frames of each stage that one latent frame spans (the patch level first).
        self.frames_per_latent = [math.prod(config.strides[index:]) for index in range(len(config.strides) + 1)]

    def receptive_field(self) -> tuple[int, int]:
        """`(left, right)`: latent frame `k` depends on the audio of latent frames `k - left` to `k + right`."""
        steps = [self.input_conv]
        for stage in self.stages:
            steps += [step for step in (stage.downsample, stage.transformer) if step is not None]
        first_patch, last_patch = input_span(steps + [self.output_conv], 0, 0)
        patches_per_latent = self.frames_per_latent[0]
        return -(first_patch // patches_per_latent), last_patch // patches_per_latent

    def forward(self, input_values: torch.Tensor, frames_valid: torch.Tensor | None = None) -> torch.Tensor:
        batch_size, _, num_samples = input_values.shape
        # Patching: channel h of patch l is sample l * patch_size + h.
        patches = input_values.view(batch_size, num_samples // self.patch_size, self.patch_size).transpose(1, 2)
        num_latent_frames = patches.shape[-1] // self.frames_per_latent[0]
        lengths = [num_latent_frames * factor for factor in self.frames_per_latent]
        masks = frame_masks(frames_valid, lengths, self.frames_per_latent)
        hidden_states = self.input_conv(mask_padding(patches, masks[0]))
        for stage, stage_mask, previous_mask in zip(self.stages, masks[1:], masks[:-1]):
            hidden_states = stage(mask_padding(hidden_states, previous_mask), stage_mask)
        return self.output_conv(mask_padding(hidden_states, masks[-1]))


class StableCodecDecoder(nn.Module):
    """Latents `(batch, latent_dim, frames)` to waveform `(batch, 1, frames * hop_length)`."""

    def __init__(self, config: StableCodecConfig):
        super().__init__()
        self.patch_size = config.patch_size
        widths = config.stage_widths
        self.input_conv = weight_normed(nn.Conv1d(config.latent_dim, widths[-1], kernel_size=3, padding=1))
        layer_idx, stages = sum(config.transformer_depths), []
        in_widths, out_widths = widths[::-1], ([widths[0]] + widths[:-1])[::-1]
        for in_width, out_width, stride, depth in zip(
            in_widths, out_widths, config.strides[::-1], config.transformer_depths[::-1]
        ):
            stages.append(StableCodecDecoderStage(config, in_width, out_width, stride, depth, layer_idx))
            layer_idx += depth
        self.stages = nn.ModuleList(stages)
        self.output_conv = weight_normed(nn.Conv1d(widths[0], config.patch_size, kernel_size=7, padding=3, bias=False))
        self.frames_per_latent = [math.prod(config.strides[index:]) for index in range(len(config.strides) + 1)][::-1]

    def receptive_field(self) -> tuple[int, int]:
        """`(left, right)`: the audio of latent frame `k` depends on latent frames `k - left` to `k + right`."""
        steps = [self.input_conv]
        for stage in self.stages:
            steps += [step for step in (stage.transformer, stage.upsample) if step is not None]
        first, last = input_span(steps + [self.output_conv], 0, self.frames_per_latent[-1] - 1)
        return -first, last

    def forward(self, latents: torch.Tensor, frames_valid: torch.Tensor | None = None) -> torch.Tensor:
        lengths = [latents.shape[-1] * factor for factor in self.frames_per_latent]
        masks = frame_masks(frames_valid, lengths, self.frames_per_latent)
        hidden_states = self.input_conv(mask_padding(latents, masks[0]))
        for stage, stage_mask in zip(self.stages, masks[:-1]):
            hidden_states = stage(hidden_states, stage_mask)
        patches = mask_padding(self.output_conv(mask_padding(hidden_states, masks[-1])), masks[-1])
        # Unpatching: (batch, patch_size, patches) -> (batch, 1, patches * patch_size).
        return patches.transpose(1, 2).reshape(latents.shape[0], 1, -1)


class StableCodecFSQ(nn.Module):
    """Finite scalar quantization of values in [-scale, scale] onto `levels[d]` evenly spaced points per channel.

    Indices are mixed-radix numbers over the channels (channel 0 least significant), computed in float64 with
    rounding, as stable-codec 0.1.2 does (stable-audio-tools 0.0.17 truncates, which can be off by one).
    """

    def __init__(self, levels: Sequence[int], scale: float = 1.0):
        super().__init__()
        self.levels_list = [int(level) for level in levels]
        self.scale = float(scale)
        self.codebook_size = math.prod(self.levels_list)
        self.register_buffer("levels", torch.zeros(len(levels), dtype=torch.int64), persistent=False)
        self.register_buffer("basis", torch.zeros(len(levels), dtype=torch.int64), persistent=False)
        self.register_buffer("step", torch.zeros(len(levels), dtype=torch.float64), persistent=False)
        self.reset_buffers()

    def reset_buffers(self):
        levels = torch.tensor(self.levels_list, dtype=torch.int64, device=self.levels.device)
        basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), dim=0)
        self.levels.copy_(levels)
        self.basis.copy_(basis)
        self.step.copy_(2.0 * self.scale / (levels.double() - 1.0))

    def quantize(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`values` (..., channels) in float64, already squashed. Returns (quantized float64 values, indices)."""
        level_indices = torch.round((values + self.scale) / self.step)
        quantized = values + (level_indices * self.step - self.scale - values).detach()  # straight-through
        indices = (level_indices.long() * self.basis).sum(dim=-1)
        return quantized, indices

    def dequantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (...) to float64 values (..., channels)."""
        level_indices = (indices[..., None] // self.basis) % self.levels
        return level_indices.double() * self.step - self.scale


class StableCodecDitheredFSQ(nn.Module):
    """The training-time bottleneck: tanh, then FSQ. In training mode, per clip, the rounding is skipped with
    probability `noise_dropout` and, independently, uniform dither noise of one quantization step replaces it with
    probability `1 - noise_dropout`, as in the original's DitheredFSQ."""

    def __init__(self, config: StableCodecConfig):
        super().__init__()
        self.noise_dropout = config.fsq_noise_dropout
        self.fsq = StableCodecFSQ(config.fsq_levels)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (batch, channels, frames) to quantized latents (same shape and dtype) and codes
        (batch, 1, frames)."""
        squashed = torch.tanh(latents.transpose(1, 2).double())
        quantized, indices = self.fsq.quantize(squashed)
        if self.training:
            keep_shape = (squashed.shape[0], 1, 1)
            skip_rounding = torch.rand(keep_shape, device=latents.device) < self.noise_dropout
            quantized = torch.where(skip_rounding, squashed, quantized)
            skip_dither = torch.rand(keep_shape, device=latents.device) < self.noise_dropout
            dithered = squashed + (torch.rand_like(squashed) - 0.5) * self.fsq.step
            quantized = torch.where(skip_dither, quantized, dithered)
        return quantized.transpose(1, 2).to(latents.dtype), indices[:, None, :]

    def decode(self, audio_codes: torch.Tensor) -> torch.Tensor:
        """Codes (batch, 1, frames) to float64 latents (batch, channels, frames)."""
        return self.fsq.dequantize(audio_codes[:, 0]).transpose(1, 2)


class StableCodecResidualFSQ(nn.Module):
    """The post-hoc bottleneck of the paper: tanh, then stages of FSQ, each quantizing the residual left by the
    previous ones (stage scales shrink so that each refines the last). No parameters: any stages fit any model."""

    def __init__(self, stages: Sequence[tuple[Sequence[int], float]]):
        super().__init__()
        self.stages = nn.ModuleList(StableCodecFSQ(levels, scale) for levels, scale in stages)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (batch, channels, frames) to quantized latents and codes (batch, num_stages, frames)."""
        residual = torch.tanh(latents.transpose(1, 2).double())
        quantized_sum, codes = torch.zeros_like(residual), []
        for stage in self.stages:
            quantized, indices = stage.quantize(residual)
            residual = residual - quantized
            quantized_sum = quantized_sum + quantized
            codes.append(indices)
        return quantized_sum.transpose(1, 2).to(latents.dtype), torch.stack(codes, dim=1)

    def decode(self, audio_codes: torch.Tensor) -> torch.Tensor:
        """Codes (batch, num_stages, frames) to float64 latents (batch, channels, frames)."""
        latents = sum(stage.dequantize(audio_codes[:, index]) for index, stage in enumerate(self.stages))
        return latents.transpose(1, 2)


def resolve_posthoc_stages(posthoc_bottleneck: PosthocBottleneck, latent_dim: int) -> list[tuple[list[int], float]]:
    """A preset name or explicit `(levels, scale)` stages, validated against the latent width."""
    if isinstance(posthoc_bottleneck, str):
        if posthoc_bottleneck not in POSTHOC_BOTTLENECK_PRESETS:
            raise ValueError(
                f"Unknown post-hoc bottleneck preset {posthoc_bottleneck!r}; the presets are "
                f"{sorted(POSTHOC_BOTTLENECK_PRESETS)}, or pass a list of (levels, scale) stages."
            )
        return POSTHOC_BOTTLENECK_PRESETS[posthoc_bottleneck]
    stages = []
    try:
        for levels, scale in posthoc_bottleneck:
            stages.append(([int(level) for level in levels], float(scale)))
    except (TypeError, ValueError):
        raise ValueError(
            f"A post-hoc bottleneck is a preset name or a list of (levels, scale) stages, got {posthoc_bottleneck!r}."
        ) from None
    if not stages:
        raise ValueError("A post-hoc bottleneck needs at least one (levels, scale) stage.")
    for levels, scale in stages:
        if len(levels) != latent_dim or any(level < 2 for level in levels) or not scale > 0:
            raise ValueError(
                f"Each post-hoc stage needs {latent_dim} levels of at least 2 and a positive scale, got "
                f"({levels}, {scale})."
            )
    return stages


def check_kwargs(kwargs: dict) -> None:
    """`**kwargs` carry transformers' shared options; anything else is a misspelt argument, which must not pass
    unnoticed. Attention weights and hidden states are not returned by this model."""
    unknown = sorted(set(kwargs) - set(TransformersKwargs.__annotations__))
    if unknown:
        raise TypeError(f"Unexpected keyword arguments {unknown}.")
    requested = sorted(name for name in ("output_attentions", "output_hidden_states") if kwargs.get(name))
    if requested:
        raise ValueError(f"{requested}: Stable Codec returns neither attention weights nor hidden states.")


class StableCodecPreTrainedModel(PreTrainedAudioTokenizerBase):
    config: StableCodecConfig
    base_model_prefix = "stable_codec"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["StableCodecTransformerLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # linear layers and layer norms
        if isinstance(module, StableCodecLayerScale):
            init.constant_(module.scale, module.init_value)
        elif isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and parametrize.is_parametrized(module, "weight"):
            direction = module.parametrizations.weight.original1
            fan_in = direction[0].numel() if isinstance(module, nn.Conv1d) else direction.shape[0] * direction.shape[2]
            init.normal_(direction, mean=0.0, std=fan_in**-0.5)
            # Magnitude equal to the norm of the direction: the effective weight starts as the direction itself.
            magnitude = torch.linalg.vector_norm(direction, dim=(1, 2), keepdim=True)
            init.copy_(module.parametrizations.weight.original0, magnitude)
        elif isinstance(module, StableCodecFSQ):
            module.reset_buffers()


class StableCodecModel(StableCodecPreTrainedModel):
    """Stable Codec: a transformer audio autoencoder with a finite-scalar-quantized latent, for speech at 16 kHz.

    `encode` turns a waveform into tokens, `decode` turns tokens back into a waveform, `forward` does both.
    `posthoc_bottleneck=None` uses the training-time FSQ (one token per frame, `config.codebook_size` values);
    a preset name (`1x46656_400bps`, `2x15625_700bps`, `4x729_1000bps`) or a list of `(levels, scale)` stages uses
    the post-hoc residual FSQ of the paper (one token per stage and frame).
    """

    def __init__(self, config: StableCodecConfig):
        super().__init__(config)
        self.encoder = StableCodecEncoder(config)
        self.quantizer = StableCodecDitheredFSQ(config)
        self.decoder = StableCodecDecoder(config)
        self._posthoc_quantizers = {}
        self._compiled_stream_coders = {}
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        r"""
        Loads a folder or Hub repo saved with `save_pretrained`, or one in the original layout (`model_config.json`
        + `model.safetensors` / `model.ckpt`, as Stability AI publishes `stabilityai/stable-codec-speech-16k`),
        which is converted on the fly.
        """
        layout = find_original_layout(pretrained_model_name_or_path, **kwargs)
        if layout is not None:
            return cls._from_original_layout(layout, pretrained_model_name_or_path, **kwargs)
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
            raise OriginalCheckpointError(
                f"{folder} holds no Stable Codec checkpoint: expected config.json + model.safetensors (this "
                f"package's format) or model_config.json + {' or '.join(ORIGINAL_WEIGHT_FILES)} (the original layout)."
            )
        precision = requested_quantization(kwargs.get("quantization_config"))
        if precision is not None:
            check_device(precision, loading_device(kwargs.get("device_map")))
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if precision is not None:
            # torchao quantizes while loading; a wrong activation dtype would only fail at the first matmul.
            check_device(precision, model.device, model.dtype)
        return model

    # What on-the-fly conversion honours; other `from_pretrained` arguments are refused by name.
    _ORIGINAL_LAYOUT_KWARGS = {"attn_implementation", "config", "dtype", "torch_dtype", "device_map"}

    @classmethod
    def _from_original_layout(cls, layout, location, **kwargs) -> "StableCodecModel":
        options = split_loading_kwargs(kwargs)[1]
        unsupported = sorted(
            key
            for key, value in options.items()
            if key not in cls._ORIGINAL_LAYOUT_KWARGS and not key.startswith("_") and value is not None
        )
        if unsupported:
            raise ValueError(
                f"{unsupported} are not supported when converting an original checkpoint on the fly; convert it once "
                "with conversion/convert_stable_codec_checkpoint.py and load the result instead."
            )
        logger.info(
            f"{location} is an original Stable Codec checkpoint ({os.path.basename(layout.weights_path)}): converting "
            "it on the fly. `save_pretrained` the model to load it directly next time."
        )
        model = cls.from_original_checkpoint(
            layout.model_config_path, layout.weights_path, config=options.get("config")
        )
        dtype = options.get("dtype") or options.get("torch_dtype")
        if dtype not in (None, "auto"):
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        if options.get("attn_implementation") is not None:
            model.set_attn_implementation(options["attn_implementation"])
        device = options.get("device_map")
        if device is not None:
            if not isinstance(device, (str, int, torch.device)) or device == "auto":
                raise ValueError(
                    "on-the-fly conversion places the model on one device: pass device_map='cuda:0' or similar."
                )
            model = model.to(device)
        return model

    @classmethod
    def from_original_checkpoint(
        cls, model_config_path, checkpoint_path, config: StableCodecConfig | None = None, progress: bool = False
    ) -> "StableCodecModel":
        """The model (float32, eval mode) of an original `model_config.json` and its weights (`model.safetensors`
        or `model.ckpt`); `config`, if given, replaces the translated one and must describe the same weights.
        Raises `OriginalCheckpointError` naming missing, unexpected or misshapen weights."""
        config = config or StableCodecConfig.from_original_config(read_original_config(model_config_path))
        model = cls(config)
        expected = model.state_dict()
        state_dict = convert_original_state_dict(
            load_original_weights(checkpoint_path), len(config.strides), set(expected), progress
        )
        mismatched = [
            f"{key}: checkpoint {tuple(tensor.shape)} vs config {tuple(expected[key].shape)}"
            for key, tensor in state_dict.items()
            if tensor.shape != expected[key].shape
        ]
        if mismatched:
            raise OriginalCheckpointError(f"the checkpoint's weights do not fit its config: {mismatched[:10]}")
        model.load_state_dict(state_dict, strict=True)
        return model.eval()

    def get_input_embeddings(self) -> None:
        """None: the input is audio, there is no token embedding (transformers' torchao quantizer asks for it)."""
        return None

    # What a user reads off the model --------------------------------------------------------------------------

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def encoder_receptive_field(self) -> tuple[int, int]:
        """`(left, right)` in latent frames: the latents of frame `k` depend on the audio of frames `k - left` to
        `k + right` and on nothing else. (1326, 1347), about 54 s each side, for the paper-scale model."""
        return self.encoder.receptive_field()

    @property
    def decoder_receptive_field(self) -> tuple[int, int]:
        """`(left, right)` in latent frames: the audio of frame `k` depends on the latents of frames `k - left` to
        `k + right` and on nothing else. (1326, 1347) for the paper-scale model."""
        return self.decoder.receptive_field()

    def codebook_sizes(self, posthoc_bottleneck: PosthocBottleneck = None) -> list[int]:
        """Distinct values of each token of a frame, for the given bottleneck."""
        return [stage.codebook_size for stage in self._bottleneck_stages(posthoc_bottleneck)]

    def tokens_per_step(self, posthoc_bottleneck: PosthocBottleneck = None) -> int:
        """Tokens per latent frame for the given bottleneck."""
        return len(self.codebook_sizes(posthoc_bottleneck))

    def bits_per_second(self, posthoc_bottleneck: PosthocBottleneck = None) -> float:
        """Bitrate of the tokens: frame rate times the bits of all tokens of a frame."""
        return self.frame_rate * sum(math.log2(size) for size in self.codebook_sizes(posthoc_bottleneck))

    # Bottlenecks ----------------------------------------------------------------------------------------------

    def _bottleneck(self, posthoc_bottleneck: PosthocBottleneck) -> nn.Module:
        if posthoc_bottleneck is None:
            return self.quantizer
        stages = resolve_posthoc_stages(posthoc_bottleneck, self.config.latent_dim)
        key = repr(stages)
        quantizer = self._posthoc_quantizers.get(key)
        if quantizer is None or quantizer.stages[0].basis.device != self.quantizer.fsq.basis.device:
            # Built on demand and not registered as a submodule: it has no weights and must not enter checkpoints.
            quantizer = StableCodecResidualFSQ(stages).to(self.quantizer.fsq.basis.device)
            self._posthoc_quantizers[key] = quantizer
        return quantizer

    def _bottleneck_stages(self, posthoc_bottleneck: PosthocBottleneck) -> list[StableCodecFSQ]:
        bottleneck = self._bottleneck(posthoc_bottleneck)
        return [bottleneck.fsq] if bottleneck is self.quantizer else list(bottleneck.stages)

    # Input checks -----------------------------------------------------------------------------------------------

    def _check_audio(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Validates the waveform and returns the padding mask as (batch, samples) booleans, or None."""
        if not isinstance(input_values, torch.Tensor) or not input_values.is_floating_point():
            given = type(input_values).__name__
            if isinstance(input_values, torch.Tensor):
                given += f" of {input_values.dtype}"
            raise ValueError(
                "`input_values` must be a floating-point tensor of shape (batch_size, 1, num_samples); got "
                f"{given}. Use StableCodecFeatureExtractor to prepare raw audio."
            )
        if input_values.dim() != 3 or input_values.shape[1] != 1:
            raise ValueError(
                "`input_values` must have shape (batch_size, 1, num_samples) (mono audio), got "
                f"{tuple(input_values.shape)}."
            )
        if input_values.shape[0] == 0 or input_values.shape[-1] == 0:
            raise ValueError(f"`input_values` is empty: shape {tuple(input_values.shape)}.")
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(input_values).all()):
            raise ValueError("`input_values` contains NaN or infinite samples.")
        if padding_mask is None:
            return None
        if padding_mask.dim() == 3:
            padding_mask = padding_mask[:, 0]
        if padding_mask.shape != (input_values.shape[0], input_values.shape[-1]):
            raise ValueError(
                f"`padding_mask` must have shape (batch_size, num_samples) = "
                f"{(input_values.shape[0], input_values.shape[-1])}, got {tuple(padding_mask.shape)}."
            )
        return padding_mask.bool()

    def _check_codes(self, audio_codes: torch.Tensor, posthoc_bottleneck: PosthocBottleneck) -> None:
        sizes = self.codebook_sizes(posthoc_bottleneck)
        name = "the training-time FSQ" if posthoc_bottleneck is None else f"post-hoc bottleneck {posthoc_bottleneck!r}"
        if not isinstance(audio_codes, torch.Tensor) or audio_codes.is_floating_point() or audio_codes.is_complex():
            raise ValueError("`audio_codes` must be an integer tensor of shape (batch_size, tokens_per_step, frames).")
        if audio_codes.dim() != 3 or audio_codes.shape[1] != len(sizes):
            raise ValueError(
                f"`audio_codes` must have shape (batch_size, {len(sizes)}, frames) for {name}, got "
                f"{tuple(audio_codes.shape)}. Decode with the bottleneck the codes were encoded with."
            )
        if audio_codes.shape[0] == 0 or audio_codes.shape[-1] == 0:
            raise ValueError(f"`audio_codes` is empty: shape {tuple(audio_codes.shape)}.")
        if torch.compiler.is_compiling():
            return
        for index, size in enumerate(sizes):
            low, high = int(audio_codes[:, index].min()), int(audio_codes[:, index].max())
            if low < 0 or high >= size:
                raise ValueError(
                    f"`audio_codes` token {index} holds values in [{low}, {high}], outside the codebook of {name} "
                    f"([0, {size - 1}]). Decode with the bottleneck the codes were encoded with."
                )

    def _chunk_frames(self, chunk_length_s: float | None) -> int | None:
        """Latent frames per chunk (rounded down), or None for no chunking."""
        if chunk_length_s is None:
            return None
        if isinstance(chunk_length_s, bool) or not isinstance(chunk_length_s, numbers.Real) or not chunk_length_s > 0:
            raise ValueError(f"`chunk_length_s` must be a positive number of seconds or None, got {chunk_length_s!r}.")
        frames = float(chunk_length_s) * self.frame_rate
        if math.isinf(frames):
            return None
        if frames < 1 - 1e-9:
            raise ValueError(
                f"`chunk_length_s` = {chunk_length_s} s is shorter than one latent frame ({1 / self.frame_rate} s); "
                "chunks are whole frames."
            )
        return math.floor(frames + 1e-9)

    # Encode, decode, forward -----------------------------------------------------------------------------------

    def _run_coder(
        self, coder: nn.Module, inputs: torch.Tensor, frames_valid: torch.Tensor | None, chunk_frames: int | None
    ):
        """The encoder or decoder on the whole signal, or chunk by chunk with its receptive field as context."""
        if chunk_frames is None:
            return coder(inputs, frames_valid)
        is_encoder = coder is self.encoder
        steps_per_frame = (self.hop_length, 1) if is_encoder else (1, self.hop_length)
        description = "encoding" if is_encoder else "decoding"
        return run_in_chunks(
            coder, inputs, frames_valid, chunk_frames, coder.receptive_field(), steps_per_frame, description
        )

    def _encode_latents(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None, chunk_frames: int | None):
        """Pads to whole latent frames and runs the encoder, keeping padding frames out of every clip's result."""
        num_samples = input_values.shape[-1]
        num_frames = -(-num_samples // self.hop_length)
        frames_valid = None
        if padding_mask is not None:
            frames_valid = self._frames_valid(padding_mask)
            if torch.compiler.is_compiling() or not bool(padding_mask.all()):
                input_values = mask_padding(input_values, padding_mask)
            if not torch.compiler.is_compiling() and int(frames_valid.min()) == num_frames:
                frames_valid = None  # no padding frame anywhere: skip the masking work
        if num_frames * self.hop_length != num_samples:
            input_values = nn.functional.pad(input_values, (0, num_frames * self.hop_length - num_samples))
        # Feature extractors give float32 audio; a model loaded in bfloat16 computes in bfloat16.
        return self._run_coder(self.encoder, input_values.to(self.dtype), frames_valid, chunk_frames)

    @can_return_tuple
    def encode(
        self,
        input_values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        posthoc_bottleneck: PosthocBottleneck = None,
        chunk_length_s: float | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> StableCodecEncoderOutput:
        r"""
        Encodes a waveform into tokens.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, num_samples)`):
                Mono audio at `config.sampling_rate`, as prepared by `StableCodecFeatureExtractor` (which also
                normalizes loudness, as the original does before encoding). Lengths that are not a multiple of
                `hop_length` are padded with zeros.
            padding_mask (`torch.Tensor` of shape `(batch_size, num_samples)`, *optional*):
                1 for real samples, 0 for padding at the end of shorter clips; padding frames are kept out of
                attention so that every clip gets the codes it would get alone.
            posthoc_bottleneck (`str` or list of `(levels, scale)`, *optional*):
                None for the training-time FSQ, else a preset name or explicit stages of the residual FSQ.
            chunk_length_s (`float`, *optional*):
                For long audio: encode chunks of this many seconds (rounded down to whole latent frames), each
                together with `encoder_receptive_field` frames of audio on either side (about 54 s for the
                paper-scale model; less at the ends of the signal), keeping each chunk's own frames. The latents
                equal the unchunked ones up to float rounding, while activation memory is bounded by the chunk
                length instead of the signal length; compute grows by `(chunk + left + right) / chunk`. None
                (default) encodes the whole signal at once. A progress bar shows at `transformers` logging
                verbosity INFO.
        """
        check_kwargs(kwargs)
        padding_mask = self._check_audio(input_values, padding_mask)
        chunk_frames = self._chunk_frames(chunk_length_s)
        latents = self._encode_latents(input_values, padding_mask, chunk_frames)
        _, audio_codes = self._bottleneck(posthoc_bottleneck)(latents)
        return StableCodecEncoderOutput(
            audio_codes=audio_codes, latents=latents, audio_codes_mask=self.get_audio_codes_mask(padding_mask)
        )

    def get_audio_codes_mask(self, padding_mask: torch.Tensor | None) -> torch.LongTensor | None:
        """The frame mask `(batch_size, frames)` of a sample mask `(batch_size, num_samples)` (or `(batch_size, 1,
        num_samples)`): 1 for every latent frame that holds audio, a clip's last, partly filled frame included (the
        frame it would get alone, zero-padded), 0 for frames of padding only. None for None."""
        if padding_mask is None:
            return None
        if padding_mask.dim() == 3:
            padding_mask = padding_mask[:, 0]
        num_frames = -(-padding_mask.shape[-1] // self.hop_length)
        frames_valid = self._frames_valid(padding_mask.bool())
        return frame_masks(frames_valid, [num_frames], [1])[0].long()

    def _frames_valid(self, padding_mask: torch.Tensor) -> torch.Tensor:
        """Latent frames per clip that hold audio: a clip's last, partly filled frame counts."""
        return torch.div(padding_mask.sum(dim=-1) + self.hop_length - 1, self.hop_length, rounding_mode="floor")

    @can_return_tuple
    def decode(
        self,
        audio_codes: torch.Tensor,
        audio_codes_mask: torch.Tensor | None = None,
        posthoc_bottleneck: PosthocBottleneck = None,
        chunk_length_s: float | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> StableCodecDecoderOutput:
        r"""
        Decodes tokens into a waveform.

        Args:
            audio_codes (`torch.LongTensor` of shape `(batch_size, tokens_per_step, frames)`):
                Tokens from `encode`, made with the same `posthoc_bottleneck`.
            audio_codes_mask (`torch.Tensor` of shape `(batch_size, frames)`, *optional*):
                1 for frames of audio, 0 for padding frames (from `encode`, or `get_audio_codes_mask`); padding
                frames are kept out of attention and their samples are zeroed.
            posthoc_bottleneck (`str` or list of `(levels, scale)`, *optional*):
                The bottleneck the codes were made with (None: the training-time FSQ).
            chunk_length_s (`float`, *optional*):
                For long audio: decode chunks of this many seconds (rounded down to whole latent frames), each
                together with `decoder_receptive_field` frames of codes on either side, keeping each chunk's own
                audio; equal to the unchunked audio up to float rounding, with activation memory bounded by the
                chunk length (see `encode`).
        """
        check_kwargs(kwargs)
        self._check_codes(audio_codes, posthoc_bottleneck)
        chunk_frames = self._chunk_frames(chunk_length_s)
        latents = self._bottleneck(posthoc_bottleneck).decode(audio_codes)
        return StableCodecDecoderOutput(audio_values=self._decode_latents(latents, audio_codes_mask, chunk_frames))

    # Streaming ------------------------------------------------------------------------------------------------

    def _run_stream(
        self,
        coder: nn.Module,
        chunks: Iterable[torch.Tensor],
        check: Callable[[torch.Tensor], None],
        prepare: Callable[[torch.Tensor], torch.Tensor],
        windows: tuple[int | None, int | None, int],
        compile_mode: str | None,
    ) -> Iterator[torch.Tensor]:
        """`run_as_stream` of the encoder or decoder on the `prepare`d, `check`ed chunks. `windows` are the lookahead,
        context and step in latent frames (None: the side of the receptive field), validated here, at the call, as
        is `compile_mode`."""
        step = self._stream_coder(coder, compile_mode)
        (left, right), (lookahead_frames, context_frames, step_frames) = coder.receptive_field(), windows
        context_frames = left if context_frames is None else context_frames
        lookahead_frames = right if lookahead_frames is None else lookahead_frames
        for name, value, least in (
            ("context_frames", context_frames, 0),
            ("lookahead_frames", lookahead_frames, 0),
            ("step_frames", step_frames, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"`{name}` must be an integer >= {least} (latent frames) or None, got {value!r}.")
        inputs = (prepare(chunk) for chunk in self._stream_chunks(chunks, check))
        steps_per_frame = (self.hop_length, 1) if coder is self.encoder else (1, self.hop_length)
        windows = int(context_frames), int(lookahead_frames), int(step_frames)
        # Uncompiled flex attention still compiles its kernel per shape: without fixed windows, each warm-up and
        # last window length would stall the stream for a compile.
        fixed_shape = compile_mode is not None or self.config._attn_implementation == "flex_attention"
        return run_as_stream(step, inputs, steps_per_frame, *windows, fixed_shape=fixed_shape)

    def _stream_coder(self, coder: nn.Module, compile_mode: str | None) -> Callable:
        """What steps a stream: `coder` itself, or `torch.compile(coder, mode=compile_mode)` for one input shape,
        kept on the model per coder and mode so that later streams of the same shape reuse its graph."""
        if compile_mode is None:
            return coder
        if compile_mode not in STREAM_COMPILE_MODES:
            raise ValueError(f"`compile_mode` must be None or one of {STREAM_COMPILE_MODES}, got {compile_mode!r}.")
        implementation = self.config._attn_implementation
        if implementation not in ("sdpa", "eager"):
            # Every compiled call carries a frame mask (see `run_as_stream`): flash attention packs the valid frames
            # into shapes known only at run time, and torch 2.11's compiled flex kernel faults on padding masks.
            raise ValueError(
                f"`compile_mode` needs attn_implementation 'sdpa' or 'eager', the model uses {implementation!r}: "
                "the compiled stream masks the padding of its warm-up and last windows, which flash attention "
                "cannot do in one graph and on which torch 2.11's compiled flex attention faults. Stream uncompiled, "
                "or `model.set_attn_implementation('sdpa')`."
            )
        key = ("encoder" if coder is self.encoder else "decoder", compile_mode)
        if key not in self._compiled_stream_coders:
            self._compiled_stream_coders[key] = torch.compile(coder, mode=compile_mode, fullgraph=True, dynamic=False)
        compiled = self._compiled_stream_coders[key]
        if compile_mode not in ("reduce-overhead", "max-autotune"):
            return compiled

        def replay(inputs: torch.Tensor, frames_valid: torch.Tensor) -> torch.Tensor:
            # CUDA graphs write every replay into the same memory: each call is a new step (the stream copies out
            # what it yields before the next one).
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(inputs, frames_valid)

        return replay

    def _stream_chunks(
        self, chunks: Iterable[torch.Tensor], check: Callable[[torch.Tensor], None]
    ) -> Iterator[torch.Tensor]:
        """The non-empty chunks, each checked by `check` and against the first chunk's batch size."""
        batch_size = None
        for index, chunk in enumerate(chunks):
            if isinstance(chunk, torch.Tensor) and chunk.dim() == 3 and chunk.shape[-1] == 0:
                continue  # nothing arrived this time
            try:
                check(chunk)
            except ValueError as error:
                raise ValueError(f"stream chunk {index}: {error}") from None
            if batch_size is None:
                batch_size = chunk.shape[0]
            elif chunk.shape[0] != batch_size:
                raise ValueError(
                    f"stream chunk {index} holds {chunk.shape[0]} streams, the first chunk {batch_size}: every chunk "
                    "must carry the same streams."
                )
            yield chunk

    def decode_stream(
        self,
        code_chunks: Iterable[torch.Tensor],
        posthoc_bottleneck: PosthocBottleneck = None,
        lookahead_frames: int | None = None,
        context_frames: int | None = None,
        step_frames: int = 1,
        compile_mode: str | None = None,
    ) -> Iterator[torch.Tensor]:
        r"""
        Decodes tokens as they arrive (from a speech LM, frame by frame): a generator of audio chunks
        `(batch_size, 1, samples)` that yields each step's audio as soon as the lookahead past it has arrived, and
        the rest when `code_chunks` ends. Their concatenation has the length of `decode`'s output.

        Args:
            code_chunks (iterable of `torch.LongTensor` of shape `(batch_size, tokens_per_step, frames)`):
                Consecutive pieces of the codes of `batch_size` concurrent streams, of any (also 0 or 1) frames.
            posthoc_bottleneck (`str` or list of `(levels, scale)`, *optional*):
                The bottleneck the codes were made with (None: the training-time FSQ).
            lookahead_frames (`int`, *optional*):
                Future frames the decoder sees for each step; the first audio comes after this many frames plus one
                step. Default: the right side of `decoder_receptive_field`, which makes the audio exact.
            context_frames (`int`, *optional*):
                Past frames the decoder sees for each step. Default: the left side of `decoder_receptive_field`.
            step_frames (`int`, *optional*, defaults to 1):
                Frames of audio per decoder call: larger steps cost less compute per second of audio and add latency.
            compile_mode (`str`, *optional*):
                None: the decoder runs as it is. A `torch.compile` mode (`"default"`, `"reduce-overhead"` for CUDA
                graphs, `"max-autotune"`, `"max-autotune-no-cudagraphs"`): every decoder call, warm-up and end
                included, runs on `context_frames + step_frames + lookahead_frames` frames (shorter windows padded
                with masked frames, which gives the same audio), through one graph compiled on the first call for
                that shape and batch size and kept on the model for later streams. Needs the sdpa or eager attention.

        With the default lookahead and context the audio equals `decode` of all codes up to float rounding; with
        less, each step's audio is what the decoder makes of the truncated window (see docs/streaming.md). After
        the first `context_frames / step_frames` steps and until the end, every decoder call runs on exactly
        `context_frames + step_frames + lookahead_frames` frames (with flex attention, compiled per shape, every
        call does, as when compiled). Runs without gradients.
        """
        bottleneck = self._bottleneck(posthoc_bottleneck)
        stream = self._run_stream(
            self.decoder,
            code_chunks,
            check=lambda chunk: self._check_codes(chunk, posthoc_bottleneck),
            prepare=lambda chunk: bottleneck.decode(chunk).to(self.dtype),
            windows=(lookahead_frames, context_frames, step_frames),
            compile_mode=compile_mode,
        )
        return _without_gradients(stream)

    def encode_stream(
        self,
        audio_chunks: Iterable[torch.Tensor],
        posthoc_bottleneck: PosthocBottleneck = None,
        lookahead_frames: int | None = None,
        context_frames: int | None = None,
        step_frames: int = 1,
        compile_mode: str | None = None,
    ) -> Iterator[torch.Tensor]:
        r"""
        Encodes audio as it is recorded: a generator of code chunks `(batch_size, tokens_per_step, frames)` for
        audio chunks `(batch_size, 1, samples)` of any sizes (model input, as the feature extractor prepares it;
        the loudness normalization of a whole file cannot stream). The same windows as `decode_stream`, over the
        encoder's receptive field: with the defaults the codes are `encode`'s (up to latents within float rounding
        of an FSQ level boundary); a last, partial frame is zero-padded as `encode` pads it. `compile_mode` as for
        `decode_stream`, for the encoder.
        """
        bottleneck = self._bottleneck(posthoc_bottleneck)
        stream = self._run_stream(
            self.encoder,
            audio_chunks,
            check=lambda chunk: self._check_audio(chunk, None),
            prepare=lambda chunk: chunk.to(self.dtype),
            windows=(lookahead_frames, context_frames, step_frames),
            compile_mode=compile_mode,
        )
        return _without_gradients(bottleneck(latents)[1] for latents in stream)

    def _decode_latents(
        self, quantized_latents: torch.Tensor, audio_codes_mask: torch.Tensor | None, chunk_frames: int | None
    ) -> torch.Tensor:
        frames_valid = None
        if audio_codes_mask is not None:
            if not isinstance(audio_codes_mask, torch.Tensor):
                raise ValueError(
                    f"`audio_codes_mask` must be a tensor of shape (batch_size, frames), got "
                    f"{type(audio_codes_mask).__name__}. "
                    "(`decode(audio_codes, audio_codes_mask, posthoc_bottleneck)`: pass the bottleneck by name.)"
                )
            if audio_codes_mask.shape != (quantized_latents.shape[0], quantized_latents.shape[-1]):
                raise ValueError(
                    f"`audio_codes_mask` must have shape (batch_size, frames) = "
                    f"{(quantized_latents.shape[0], quantized_latents.shape[-1])}, "
                    f"got {tuple(audio_codes_mask.shape)}."
                )
            frames_valid = audio_codes_mask.long().sum(dim=-1)
            if not torch.compiler.is_compiling() and int(frames_valid.min()) == quantized_latents.shape[-1]:
                frames_valid = None
        return self._run_coder(self.decoder, quantized_latents.to(self.dtype), frames_valid, chunk_frames)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        posthoc_bottleneck: PosthocBottleneck = None,
        chunk_length_s: float | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> StableCodecOutput:
        r"""
        Encodes and decodes a waveform. In training mode the training-time FSQ dithers (see
        `StableCodecDitheredFSQ`) and gradients flow straight through the rounding.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, num_samples)`):
                Mono audio at `config.sampling_rate`.
            padding_mask (`torch.Tensor` of shape `(batch_size, num_samples)`, *optional*):
                1 for real samples, 0 for padding.
            posthoc_bottleneck (`str` or list of `(levels, scale)`, *optional*):
                None for the training-time FSQ, else a preset name or explicit residual FSQ stages.
            chunk_length_s (`float`, *optional*):
                Encode and decode in chunks of this many seconds, each with its receptive field as context (see
                `encode`): for long audio at inference.

        Example:

        ```python
        >>> import torch
        >>> from transformers_stable_codec import StableCodecConfig, StableCodecModel

        >>> model = StableCodecModel(StableCodecConfig(transformer_depths=[1, 1])).eval()
        >>> audio = torch.randn(1, 1, 16000) * 0.1
        >>> out = model(audio, posthoc_bottleneck="2x15625_700bps")
        >>> out.audio_codes.shape, out.audio_values.shape
        (torch.Size([1, 2, 25]), torch.Size([1, 1, 16000]))
        ```
        """
        check_kwargs(kwargs)
        padding_mask = self._check_audio(input_values, padding_mask)
        chunk_frames = self._chunk_frames(chunk_length_s)
        latents = self._encode_latents(input_values, padding_mask, chunk_frames)
        # The decoder takes the quantized latents, not the codes: in training mode they are dithered.
        quantized_latents, audio_codes = self._bottleneck(posthoc_bottleneck)(latents)
        audio_codes_mask = self.get_audio_codes_mask(padding_mask)
        audio_values = self._decode_latents(quantized_latents, audio_codes_mask, chunk_frames)
        return StableCodecOutput(
            audio_values=audio_values[..., : input_values.shape[-1]],
            audio_codes=audio_codes,
            latents=latents,
            quantized_latents=quantized_latents,
            audio_codes_mask=audio_codes_mask,
        )


__all__ = [
    "StableCodecDecoderOutput",
    "StableCodecEncoderOutput",
    "StableCodecModel",
    "StableCodecOutput",
    "StableCodecPreTrainedModel",
]
