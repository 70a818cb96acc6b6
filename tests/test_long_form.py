"""Long-form coding: the receptive field, and chunked encode/decode that equals the unchunked model."""

import math

import pytest
import torch
from transformers.utils import logging

from transformers_stable_codec import StableCodecConfig, StableCodecModel
from transformers_stable_codec.modeling_stable_codec import (
    StableCodecRotaryEmbedding,
    apply_partial_rotary_pos_emb,
    run_in_chunks,
)

from .conftest import randomize_, tiny_config
from .model_helpers import speechlike


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def chunk_model() -> StableCodecModel:
    """Receptive field (8, 9) frames, so that 0.4 s chunks of a 3 s clip need context on both sides. Linear weights
    are larger than the default, so that the outermost frames of the field move the output well above float32
    noise: with a context one frame short on either side, chunked outputs miss the whole-signal ones by 4.7e-4 or
    more of their largest value, against 1e-6 with the full context (see test_the_whole_receptive_field_is_needed)."""
    torch.manual_seed(0)
    config = tiny_config(
        transformer_depths=[1, 1], attention_window_left=3, attention_window_right=4, initializer_range=0.05
    )
    return randomize_(StableCodecModel(config)).eval()


# --- receptive field ----------------------------------------------------------------------------------------------


def test_receptive_field_of_the_paper_scale_model():
    with torch.device("meta"):
        model = StableCodecModel(StableCodecConfig())
    # Encoder, per latent frame k: output conv +-1, 14 layers at 25 Hz (-63, +64 each), the k4 s2 conv, 14 layers
    # at 50 Hz, the k7 input conv: patches 2k - 2652 .. 2k + 2695. The decoder mirrors it.
    assert model.encoder_receptive_field == (1326, 1347)
    assert model.decoder_receptive_field == (1326, 1347)


def changed_frames(before: torch.Tensor, after: torch.Tensor, steps_per_frame: int) -> torch.Tensor:
    """Latent frames in which any value differs at all."""
    differs = (before != after).reshape(before.shape[0], -1, before.shape[-1]).any(dim=1)[0]
    return differs.view(-1, steps_per_frame).any(dim=-1).nonzero().flatten()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(transformer_depths=[2, 2]),
        dict(strides=[2, 2]),
        dict(attention_window_left=0, attention_window_right=5),
        dict(attention_window_left=7, attention_window_right=0),
    ],
    ids=["depths-2-2", "strides-2-2", "window-0-5", "window-7-0"],
)
def test_receptive_field_is_exact(overrides):
    """Perturbing the input of latent frame k changes exactly the outputs k - right .. k + left: nothing outside,
    bit for bit, and every frame inside for some sample of the frame (the field is tight)."""
    torch.manual_seed(0)
    model = randomize_(StableCodecModel(tiny_config(**overrides))).eval()
    num_frames, frame, hop = 60, 30, model.hop_length

    left, right = model.encoder_receptive_field
    audio = speechlike(1, num_frames * hop / 16000)
    reached = []
    with torch.no_grad():
        before = model.encoder(audio)
        for offset in (0, hop // 2, hop - 1):
            perturbed = audio.clone()
            perturbed[..., frame * hop + offset] += 1.0
            reached.append(changed_frames(before, model.encoder(perturbed), 1))
    reached = torch.cat(reached)
    assert (int(reached.min()), int(reached.max())) == (frame - right, frame + left)

    left, right = model.decoder_receptive_field
    latents = torch.randn(1, model.config.latent_dim, num_frames, generator=torch.Generator().manual_seed(1))
    perturbed = latents.clone()
    perturbed[..., frame] += 1.0
    with torch.no_grad():
        reached = changed_frames(model.decoder(latents), model.decoder(perturbed), hop)
    assert (int(reached.min()), int(reached.max())) == (frame - right, frame + left)


def test_rotary_scores_do_not_drift_an_hour_into_the_signal():
    """Attention scores depend on relative position only: the same queries and keys score the same at frame 180,000
    (an hour at 50 Hz) as at frame 0, as they do in a chunk. With float32 angles they differ by 3e-3 there."""
    rotary = StableCodecRotaryEmbedding(StableCodecConfig())
    query, key = torch.randn(2, 1, 1, 128, 128, generator=torch.Generator().manual_seed(0)).unbind(0)
    offset = 180_000
    cos, sin = rotary(offset + 128, torch.device("cpu"))

    def scores(start):
        cos_window, sin_window = cos[start : start + 128], sin[start : start + 128]
        rotated_key = apply_partial_rotary_pos_emb(key, cos_window, sin_window)
        return apply_partial_rotary_pos_emb(query, cos_window, sin_window) @ rotated_key.transpose(-1, -2)

    assert max_relative_error(scores(offset), scores(0)) < 1e-5


# --- chunked encode and decode ------------------------------------------------------------------------------------


def padded_batch(seconds: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    num_samples = int(16000 * max(seconds))
    audio = speechlike(len(seconds), max(seconds))
    padding_mask = (
        torch.arange(num_samples)[None, :] < torch.tensor([int(16000 * s) for s in seconds])[:, None]
    ).long()
    return audio * padding_mask[:, None, :], padding_mask


@pytest.mark.parametrize("posthoc_bottleneck", [None, "2x15625_700bps"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded-batch"])
def test_chunked_coding_equals_unchunked(chunk_model, posthoc_bottleneck, padded):
    # Lengths that are no multiple of the chunk (10 frames) nor of the hop; the clips of the batch end in different
    # chunks, so that chunks hold full, partly padded and only padded clips.
    audio, padding_mask = padded_batch((3.01, 1.93, 0.55)) if padded else (speechlike(2, 3.01), None)
    with torch.no_grad():
        whole = chunk_model.encode(audio, padding_mask, posthoc_bottleneck)
        chunked = chunk_model.encode(audio, padding_mask, posthoc_bottleneck, chunk_length_s=0.4)
        assert torch.equal(chunked.audio_codes, whole.audio_codes)
        assert max_relative_error(chunked.latents, whole.latents) < 1e-5
        if padded:
            assert torch.equal(chunked.audio_codes_mask, whole.audio_codes_mask)

        decode = dict(posthoc_bottleneck=posthoc_bottleneck, audio_codes_mask=whole.audio_codes_mask)
        expected = chunk_model.decode(whole.audio_codes, **decode).audio_values
        actual = chunk_model.decode(whole.audio_codes, chunk_length_s=0.4, **decode).audio_values
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) < 1e-4


@pytest.mark.parametrize("coder_name", ["encoder", "decoder"])
def test_the_whole_receptive_field_is_needed(chunk_model, coder_name):
    """With the receptive field as context, chunks give the whole-signal output; with one frame less on either side
    they miss it by far more than the tolerances above, so the equality tests can fail."""
    audio = speechlike(1, 3.0)
    with torch.no_grad():
        if coder_name == "encoder":
            coder, inputs, steps_per_frame = chunk_model.encoder, audio, (chunk_model.hop_length, 1)
        else:
            coder, inputs, steps_per_frame = (
                chunk_model.decoder,
                chunk_model(audio).quantized_latents,
                (1, chunk_model.hop_length),
            )
        whole = coder(inputs, None)
        left, right = coder.receptive_field()

        def chunked(context):
            return run_in_chunks(coder, inputs, None, 10, context, steps_per_frame, coder_name)

        assert max_relative_error(chunked((left, right)), whole) < 1e-5
        assert max_relative_error(chunked((left - 1, right)), whole) > 1e-4
        assert max_relative_error(chunked((left, right - 1)), whole) > 1e-4


def test_chunked_forward_equals_unchunked(chunk_model):
    audio = speechlike(1, 2.5)
    with torch.no_grad():
        whole = chunk_model(audio, posthoc_bottleneck="4x729_1000bps")
        chunked = chunk_model(audio, posthoc_bottleneck="4x729_1000bps", chunk_length_s=0.6)
    assert torch.equal(chunked.audio_codes, whole.audio_codes)
    assert max_relative_error(chunked.latents, whole.latents) < 1e-5
    assert float((chunked.audio_values - whole.audio_values).abs().max()) < 1e-4


def test_one_chunk_is_the_unchunked_computation(chunk_model):
    audio = speechlike(1, 1.0)
    with torch.no_grad():
        whole = chunk_model.encode(audio)
        for chunk_length_s in (1.0, 60, math.inf):
            chunked = chunk_model.encode(audio, chunk_length_s=chunk_length_s)
            assert torch.equal(chunked.latents, whole.latents)


def test_no_coder_call_sees_more_than_a_chunk_and_its_context(chunk_model):
    """What bounds memory: every encoder and decoder call gets at most chunk + left + right frames."""
    frames_seen = {"encoder": [], "decoder": []}
    hooks = [
        chunk_model.encoder.register_forward_hook(lambda m, args, out: frames_seen["encoder"].append(out.shape[-1])),
        chunk_model.decoder.register_forward_pre_hook(
            lambda m, args: frames_seen["decoder"].append(args[0].shape[-1])
        ),
    ]
    try:
        with torch.no_grad():
            codes = chunk_model.encode(speechlike(1, 3.0), chunk_length_s=0.2).audio_codes  # 75 frames, chunks of 5
            chunk_model.decode(codes, chunk_length_s=0.2)
    finally:
        for hook in hooks:
            hook.remove()
    for name in ("encoder", "decoder"):
        left, right = getattr(chunk_model, f"{name}_receptive_field")
        assert len(frames_seen[name]) == 15
        assert max(frames_seen[name]) == 5 + left + right


@pytest.mark.parametrize("chunk_length_s", [0, -1.0, 0.02, float("nan"), "10", True])
def test_bad_chunk_length_raises(chunk_model, chunk_length_s):
    codes = torch.zeros(1, 1, 10, dtype=torch.long)
    with pytest.raises(ValueError, match="chunk_length_s"):
        chunk_model.encode(speechlike(1, 0.4), chunk_length_s=chunk_length_s)
    with pytest.raises(ValueError, match="chunk_length_s"):
        chunk_model.decode(codes, chunk_length_s=chunk_length_s)


def test_progress_bar_only_at_info_verbosity(chunk_model, capsys):
    audio = speechlike(1, 1.0)
    verbosity = logging.get_verbosity()
    try:
        with torch.no_grad():
            chunk_model.encode(audio, chunk_length_s=0.2)
            assert "encoding" not in capsys.readouterr().err
            logging.set_verbosity_info()
            chunk_model.encode(audio, chunk_length_s=0.2)
            assert "encoding" in capsys.readouterr().err
    finally:
        logging.set_verbosity(verbosity)
