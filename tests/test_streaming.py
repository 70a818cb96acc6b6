"""Streaming decode and encode: chunks of codes (or audio) in, audio (or codes) out as soon as the lookahead allows;
exact with the receptive field as lookahead and context, and measurably not with less."""

import pytest
import torch

from transformers_stable_codec import StableCodecModel
from transformers_stable_codec.modeling_stable_codec import run_as_stream

from .conftest import randomize_, tiny_config
from .model_helpers import speechlike


@pytest.fixture(scope="module")
def stream_model() -> StableCodecModel:
    """Receptive field (8, 9) frames and weights large enough that its outermost frames move the audio well above
    float32 noise (the chunk model of test_long_form.py)."""
    torch.manual_seed(0)
    config = tiny_config(
        transformer_depths=[1, 1], attention_window_left=3, attention_window_right=4, initializer_range=0.05
    )
    return randomize_(StableCodecModel(config)).eval()


@pytest.fixture(scope="module")
def codes(stream_model) -> torch.Tensor:
    """Two streams of 61 frames (no multiple of any step below)."""
    with torch.no_grad():
        return stream_model.encode(speechlike(2, 61 * 0.04), posthoc_bottleneck="2x15625_700bps").audio_codes


def split(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Consecutive pieces of the last dimension, of the given sizes repeated until it is used up."""
    pieces, start, index = [], 0, 0
    while start < tensor.shape[-1]:
        pieces.append(tensor[..., start : start + sizes[index % len(sizes)]])
        start, index = start + sizes[index % len(sizes)], index + 1
    return pieces


def streamed(model, codes, sizes, **kwargs) -> torch.Tensor:
    return torch.cat(list(model.decode_stream(split(codes, sizes), posthoc_bottleneck="2x15625_700bps", **kwargs)), -1)


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("step_frames", [1, 4])
@pytest.mark.parametrize("sizes", [[1], [3, 1, 7, 0, 12], [61]], ids=["one-frame", "varied", "all-at-once"])
def test_stream_with_the_receptive_field_equals_decode(stream_model, codes, sizes, step_frames):
    with torch.no_grad():
        expected = stream_model.decode(codes, posthoc_bottleneck="2x15625_700bps").audio_values
    actual = streamed(stream_model, codes, sizes, step_frames=step_frames)
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) < 1e-4


def test_stream_with_eager_attention_equals_decode(stream_model, codes):
    """The stream calls the decoder itself, so every attention backend streams; eager's masks (not sdpa's) too."""
    implementation = stream_model.config._attn_implementation
    stream_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            expected = stream_model.decode(codes, posthoc_bottleneck="2x15625_700bps").audio_values
        actual = streamed(stream_model, codes, [3, 1, 7, 0, 12], step_frames=2)
    finally:
        stream_model.set_attn_implementation(implementation)
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) < 1e-4


@pytest.mark.parametrize("too_short", ["lookahead", "context"])
def test_less_than_the_receptive_field_differs(stream_model, codes, too_short):
    """One frame short on either side misses `decode` by far more than the tolerance above: the exact test can fail."""
    left, right = stream_model.decoder_receptive_field
    windows = dict(lookahead_frames=right - (too_short == "lookahead"), context_frames=left - (too_short == "context"))
    with torch.no_grad():
        expected = stream_model.decode(codes, posthoc_bottleneck="2x15625_700bps").audio_values
    actual = streamed(stream_model, codes, [5], **windows)
    assert actual.shape == expected.shape
    assert max_relative_error(actual, expected) > 1e-3


def test_audio_comes_out_as_soon_as_the_lookahead_has_arrived(stream_model, codes):
    """Frame k's audio is yielded while the chunk holding frame k + lookahead is consumed, not later; steady-state
    decoder calls all run on context + step + lookahead frames."""
    lookahead, step, context = 2, 3, 5
    frames_seen = []
    hook = stream_model.decoder.register_forward_pre_hook(lambda module, args: frames_seen.append(args[0].shape[-1]))
    yielded_after = []  # frames received when each audio chunk came out
    received = 0

    def chunks():
        nonlocal received
        for chunk in split(codes, [1]):
            received += chunk.shape[-1]
            yield chunk

    try:
        stream = stream_model.decode_stream(
            chunks(), "2x15625_700bps", lookahead_frames=lookahead, context_frames=context, step_frames=step
        )
        audio_frames = []
        for audio in stream:
            yielded_after.append(received)
            audio_frames.append(audio.shape[-1] // stream_model.hop_length)
    finally:
        hook.remove()
    num_steps = 61 // step - 1  # the steps whose lookahead arrived before the end; then the rest at once
    assert audio_frames == [step] * num_steps + [61 - step * num_steps]
    assert yielded_after[:num_steps] == [step * (index + 1) + lookahead for index in range(num_steps)]
    assert frames_seen[:num_steps] == [min(step * index, context) + step + lookahead for index in range(num_steps)]


def test_stream_encode_equals_encode(stream_model):
    audio = speechlike(2, 2.03)
    with torch.no_grad():
        expected = stream_model.encode(audio, posthoc_bottleneck="4x729_1000bps").audio_codes
    chunks = split(audio, [640, 17, 3000, 1])
    actual = torch.cat(list(stream_model.encode_stream(chunks, "4x729_1000bps", step_frames=2)), dim=-1)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lookahead_frames=-1), "lookahead_frames"),
        (dict(context_frames=-2), "context_frames"),
        (dict(step_frames=0), "step_frames"),
        (dict(lookahead_frames=1.5), "lookahead_frames"),
        (dict(context_frames=True), "context_frames"),
    ],
)
def test_bad_windows_raise_at_the_call(stream_model, codes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        stream_model.decode_stream([codes], "2x15625_700bps", **kwargs)


@pytest.mark.parametrize(
    "chunk, match",
    [
        (torch.zeros(2, 3, 4, dtype=torch.long), "shape"),
        (torch.full((2, 2, 4), 15625), "outside the codebook"),
        (torch.zeros(2, 2, 4), "integer"),
        (torch.zeros(1, 2, 4, dtype=torch.long), "same streams"),
    ],
    ids=["tokens-per-step", "codebook", "float", "batch"],
)
def test_bad_chunks_raise(stream_model, codes, chunk, match):
    with pytest.raises(ValueError, match=f"stream chunk 1.*{match}|{match}"):
        list(stream_model.decode_stream([codes[..., :5], chunk], "2x15625_700bps"))


def test_an_empty_stream_yields_nothing(stream_model):
    assert list(stream_model.decode_stream([])) == []


def recorded_calls(coder: torch.nn.Module) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    """The (input length, frames_valid) of every call of `coder`, and the hook to remove."""
    calls = []

    def record(module, args):
        calls.append((args[0].shape[-1], None if args[1] is None else args[1].tolist()))

    return calls, coder.register_forward_pre_hook(record)


@pytest.mark.parametrize("coder_name", ["decoder", "encoder"])
def test_fixed_shape_stream_equals_the_stream_with_one_shape_for_every_call(stream_model, codes, coder_name):
    """The compiled stream's windows: warm-up and last windows padded on the right with masked frames to
    C + S + K, which must give the audio (latents) of the unpadded, shorter windows, also below the receptive field
    where each window's end shows in the output."""
    lookahead, context, step = 2, 5, 3
    coder = getattr(stream_model, coder_name)
    if coder_name == "decoder":
        inputs = stream_model._bottleneck("2x15625_700bps").decode(codes).float()
        steps_per_frame = (1, stream_model.hop_length)
    else:
        inputs = speechlike(2, 61 * 0.04)[..., : 61 * stream_model.hop_length - 100]  # a partial last frame
        steps_per_frame = (stream_model.hop_length, 1)
    chunks = split(inputs, [4 * steps_per_frame[0], steps_per_frame[0], 0, 9 * steps_per_frame[0] + 7])
    with torch.no_grad():
        plain = torch.cat(list(run_as_stream(coder, chunks, steps_per_frame, context, lookahead, step)), dim=-1)
        calls, hook = recorded_calls(coder)
        try:
            fixed = list(run_as_stream(coder, chunks, steps_per_frame, context, lookahead, step, fixed_shape=True))
        finally:
            hook.remove()
    fixed = torch.cat(fixed, dim=-1)
    assert fixed.shape == plain.shape
    assert float((fixed - plain).abs().max() / plain.abs().max()) < 1e-5
    window = context + step + lookahead
    assert {length for length, _ in calls} == {window * steps_per_frame[0]}
    valid = [frames_valid[0] for _, frames_valid in calls]
    assert valid[0] == step + lookahead and valid[-1] < window  # the padded first and last windows
    assert window in valid  # steady-state windows are whole


@pytest.mark.slow
def test_compiled_stream_equals_the_eager_stream(stream_model, codes):
    """`compile_mode`: one graph for every step (the warm-up's and the last window's too), the eager audio."""
    windows = dict(lookahead_frames=2, context_frames=5, step_frames=3)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    stream_model._compiled_stream_coders.clear()
    compiled = streamed(stream_model, codes, [1], compile_mode="default", **windows)
    again = streamed(stream_model, codes[..., :40], [7], compile_mode="default", **windows)
    for actual, frames in ((compiled, 61), (again, 40)):
        expected = streamed(stream_model, codes[..., :frames], [1], **windows)
        assert actual.shape == expected.shape
        assert float((actual - expected).abs().max()) < 1e-4
    # One shape and batch size, one graph: the second stream reused it, and none fell back to eager.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_compiled_stream_needs_sdpa_or_eager_attention(stream_model, codes):
    with pytest.raises(ValueError, match="compile_mode"):
        stream_model.decode_stream([codes], "2x15625_700bps", compile_mode="fast")
    implementation = stream_model.config._attn_implementation
    stream_model.config._attn_implementation = "flash_attention_2"  # not installed here: set, not loaded
    try:
        with pytest.raises(ValueError, match="needs attn_implementation 'sdpa' or 'eager'"):
            stream_model.decode_stream([codes], "2x15625_700bps", compile_mode="default")
    finally:
        stream_model.config._attn_implementation = implementation
