"""CUDA-only behaviour: backends on the GPU, block-sparse flex masks, padded batches, compile, bf16 training steps.
Skipped cleanly without a GPU (CI); run on the device with `python -m pytest tests -m gpu`."""

import math

import pytest
import torch

from transformers_stable_codec import StableCodecModel
from transformers_stable_codec.training.trainer import enable_activation_checkpointing

from .conftest import randomize_, relative_error, requires_cuda, skip_unless_flash_attention_installed, tiny_config
from .model_helpers import speechlike


pytestmark = [requires_cuda, pytest.mark.gpu]
BACKENDS = ["eager", "sdpa", "flex_attention"]


def gpu_model(implementation: str, dtype=torch.float32, **overrides) -> StableCodecModel:
    torch.manual_seed(0)
    model = randomize_(StableCodecModel(tiny_config(**overrides))).eval()
    model.set_attn_implementation(implementation)
    return model.to("cuda", dtype)


def padded_clips(lengths: list[int]):
    """Speech clips of these lengths on the GPU, and the same as one zero-padded batch with its padding mask."""
    clips = [speechlike(1, length / 16000, seed=index)[..., :length].cuda() for index, length in enumerate(lengths)]
    batch = torch.zeros(len(clips), 1, max(lengths), device="cuda")
    padding_mask = torch.zeros(len(clips), max(lengths), dtype=torch.long, device="cuda")
    for index, clip in enumerate(clips):
        batch[index, :, : clip.shape[-1]] = clip
        padding_mask[index, : clip.shape[-1]] = 1
    return clips, batch, padding_mask


@pytest.mark.parametrize("implementation", BACKENDS)
def test_padded_batch_equals_clips_alone_on_gpu(implementation, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = gpu_model(implementation)
    clips, batch, padding_mask = padded_clips([32000, 17000, 9000])
    with torch.no_grad():
        batched = model.encode(batch, padding_mask=padding_mask)
        for index, clip in enumerate(clips):
            alone = model.encode(clip)
            frames = alone.latents.shape[-1]
            assert relative_error(batched.latents[index, :, :frames], alone.latents[0]) < 1e-4


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flash_attention_4"])
def test_flash_attention_padded_batch_equals_clips_alone_and_sdpa(implementation):
    """The flash kernels in bf16, with the exact (left, right) window: a padded batch gives each clip what it gets
    alone, and both stay within bf16 rounding of sdpa's exact band."""
    skip_unless_flash_attention_installed(implementation)
    model = gpu_model("sdpa", dtype=torch.bfloat16, attention_window_left=5, attention_window_right=9)
    clips, batch, padding_mask = padded_clips([32000, 17000, 9000])
    with torch.no_grad():
        exact = model.encode(batch, padding_mask=padding_mask).latents.float()
        model.set_attn_implementation(implementation)
        batched = model.encode(batch, padding_mask=padding_mask).latents.float()
        for index, clip in enumerate(clips):
            alone = model.encode(clip).latents.float()
            frames = alone.shape[-1]
            assert relative_error(batched[index, :, :frames], alone[0]) < 2e-2
            assert relative_error(batched[index, :, :frames], exact[index, :, :frames]) < 5e-2
        with pytest.raises(ValueError, match="float16/bfloat16 only"):
            model.float().encode(batch)


def test_flex_mask_is_block_sparse_so_memory_is_linear_in_length():
    model = gpu_model("flex_attention", attention_window_left=63, attention_window_right=64)
    for frames in (4096, 16384):
        hidden = torch.zeros(1, frames, 8, device="cuda")
        block_mask = model.encoder.stages[0].transformer.attention_layout(hidden, None).attention_mask
        # A 128-frame query block meets at most 3 key blocks of 128 under a 128-frame window: O(n) work.
        assert int(block_mask.kv_num_blocks.max()) <= 3
        assert block_mask.kv_num_blocks.shape[-1] == frames // 128


@pytest.mark.parametrize("implementation", ["sdpa", "flex_attention"])
def test_compiled_encode_decode_on_gpu_without_graph_breaks(implementation):
    model = gpu_model(implementation, dtype=torch.bfloat16)
    audio = speechlike(2, 2.0).cuda().bfloat16()
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model.decode(model.encode(audio).audio_codes).audio_values
        codes = torch.compile(model.encode, fullgraph=True)(audio).audio_codes
        compiled = torch.compile(model.decode, fullgraph=True)(codes).audio_values
    # bf16 with reductions reordered by inductor, through random weights: a few percent apart (5.3% measured on an
    # H200); a wrong graph is ~100% off.
    assert relative_error(compiled.float(), eager.float()) < 1e-1


@pytest.mark.parametrize("implementation", BACKENDS)
def test_bf16_training_step_with_gradient_checkpointing(implementation):
    model = gpu_model(implementation, dtype=torch.bfloat16).train()
    enable_activation_checkpointing(model)
    audio = speechlike(2, 1.0).cuda().bfloat16()
    output = model(audio)
    loss = (output.audio_values.float() - audio.float()).abs().mean()
    loss.backward()
    gradients = [parameter.grad for parameter in model.parameters() if parameter.requires_grad]
    assert all(gradient is not None and torch.isfinite(gradient).all() for gradient in gradients)
    assert math.isfinite(float(loss))


def streamed_on_gpu(model, codes, **kwargs) -> torch.Tensor:
    chunks = codes.split(1, dim=-1)  # one frame at a time, as a speech LM emits them
    return torch.cat(list(model.decode_stream(chunks, "2x15625_700bps", **kwargs)), dim=-1)


@pytest.mark.parametrize("implementation", [*BACKENDS, "flash_attention_2", "flash_attention_4"])
def test_stream_equals_decode_on_gpu(implementation, monkeypatch):
    """The exact stream (the receptive field as context and lookahead) on every backend: `decode`'s audio. Flash
    and flex attention in bf16, against their own `decode`: flash attention has no fp32, and a float32 flex kernel
    takes ptxas minutes per shape (the stream's fixed windows add shapes). Flex streams pad and mask their windows."""
    skip_unless_flash_attention_installed(implementation)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    in_bf16 = implementation.startswith("flash") or implementation == "flex_attention"
    dtype = torch.bfloat16 if in_bf16 else torch.float32
    model = gpu_model(implementation, dtype, attention_window_left=3, attention_window_right=4)
    with torch.no_grad():
        codes = model.encode(speechlike(2, 61 * 0.04).cuda().to(dtype), posthoc_bottleneck="2x15625_700bps")
        expected = model.decode(codes.audio_codes, posthoc_bottleneck="2x15625_700bps").audio_values
    actual = streamed_on_gpu(model, codes.audio_codes, step_frames=2)
    assert actual.shape == expected.shape
    assert relative_error(actual.float(), expected.float()) < (2e-2 if dtype == torch.bfloat16 else 1e-4)


def test_compiled_stream_with_cuda_graphs_equals_the_eager_stream(monkeypatch):
    """`compile_mode="reduce-overhead"`: CUDA graphs replayed for every step, whose yielded audio must survive the
    next replay (the stream copies it out)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = gpu_model("sdpa", attention_window_left=3, attention_window_right=4)
    with torch.no_grad():
        codes = model.encode(speechlike(2, 61 * 0.04).cuda(), posthoc_bottleneck="2x15625_700bps").audio_codes
    windows = dict(lookahead_frames=2, context_frames=5, step_frames=3)
    eager = streamed_on_gpu(model, codes, **windows)
    compiled = streamed_on_gpu(model, codes, compile_mode="reduce-overhead", **windows)
    assert compiled.shape == eager.shape
    assert relative_error(compiled, eager) < 1e-4
