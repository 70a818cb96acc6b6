"""Properties of the model that a wrong implementation breaks: the window, batching, bottlenecks, errors, I/O."""

import json
import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers import AutoConfig, AutoModel

from transformers_stable_codec import POSTHOC_BOTTLENECK_PRESETS, StableCodecConfig, StableCodecModel
from transformers_stable_codec.modeling_stable_codec import StableCodecFSQ, StableCodecResidualFSQ
from transformers_stable_codec.training.trainer import enable_activation_checkpointing

from .conftest import randomize_, relative_error, tiny_config
from .model_helpers import speechlike


# --- config -------------------------------------------------------------------------------------------------------


def test_default_config_is_the_paper_scale_model():
    config = StableCodecConfig()
    assert (config.sampling_rate, config.patch_size, config.hop_length, config.frame_rate) == (16000, 320, 640, 25.0)
    assert config.stage_widths == [1024, 1024] and config.transformer_depths == [14, 14]
    assert config.attention_window == (63, 64) and config.rotary_dim == 64
    assert config.codebook_size == 17**6


def test_paper_scale_parameter_count():
    with torch.device("meta"):
        model = StableCodecModel(StableCodecConfig())
    count = sum(parameter.numel() for parameter in model.parameters())
    assert 940e6 < count < 960e6  # "953M parameters" (ANCHORS.md)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_window_left=-1), "attention_window_left"),
        (dict(strides=[1]), "one entry per stage"),
        (dict(hidden_size=100), "multiple of `head_dim`"),
        (dict(head_dim=16, hidden_size=64), "heads need at least 32 channels"),
        (dict(fsq_levels=[17] * 5), "one level count per latent channel"),
        (dict(fsq_levels=[1] * 6), "at least 2 levels"),
        (dict(patch_size=0), "patch_size"),
        (dict(strides=[1, 3]), "strides must be even"),
        (dict(channel_multipliers=[1, 2], strides=[1, 1]), "strides must be even, or 1 with the width"),
    ],
)
def test_invalid_config_raises_naming_the_field(overrides, message):
    # `@strict` runs `validate_architecture` and wraps its ValueError, as for every transformers config.
    with pytest.raises(StrictDataclassClassValidationError, match=message) as raised:
        tiny_config(**overrides)
    assert isinstance(raised.value.__cause__, ValueError)


def test_the_window_is_checked_on_assignment_and_at_save(tmp_path):
    config = tiny_config()
    with pytest.raises(StrictDataclassFieldValidationError, match="attention_window_right"):
        config.attention_window_right = [3, 4]
    config.attention_window_left = -2
    with pytest.raises(StrictDataclassClassValidationError, match="attention_window_left"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_configs_saved_with_the_window_pair_keep_loading(tmp_path):
    legacy = tiny_config().to_dict()
    del legacy["attention_window_left"], legacy["attention_window_right"]
    (tmp_path / "config.json").write_text(json.dumps({**legacy, "sliding_window": [5, 9]}))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.attention_window == (5, 9) and "sliding_window" not in loaded.to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**legacy, "sliding_window": [5]}))
    with pytest.raises(ValueError, match="sliding_window"):
        AutoConfig.from_pretrained(tmp_path)


def test_transformers_generic_sliding_window_does_not_change_the_model(tmp_path, tiny_model):
    """transformers' shared code reads `config.sliding_window` as an int; setting one must neither break loading nor
    change the window."""
    config = tiny_config()
    config.sliding_window = 2
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.sliding_window == 2 and loaded.attention_window == tiny_model.config.attention_window


def test_auto_classes_and_save_load_roundtrip_is_bit_exact(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).attention_window == (3, 4)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, StableCodecModel) and not loaded.training
    for (name, ours), (other_name, theirs) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert name == other_name and torch.equal(ours, theirs), name
    audio = speechlike(1, 1.0)
    with torch.no_grad():
        assert torch.equal(tiny_model(audio).audio_values, loaded(audio).audio_values)


def test_readable_rates(tiny_model):
    assert tiny_model.tokens_per_step() == 1 and tiny_model.codebook_sizes() == [17**6]
    assert tiny_model.bits_per_second() == pytest.approx(25 * 6 * math.log2(17))
    expected = {
        "1x46656_400bps": (1, 46656, 387.7),
        "2x15625_700bps": (2, 15625, 696.6),
        "4x729_1000bps": (4, 729, 950.9),
    }
    for preset, (tokens, size, bps) in expected.items():
        assert tiny_model.tokens_per_step(preset) == tokens
        assert tiny_model.codebook_sizes(preset) == [size] * tokens
        assert tiny_model.bits_per_second(preset) == pytest.approx(bps, abs=0.1)


# --- attention ----------------------------------------------------------------------------------------------------


def reference_windowed_attention(query, key, value, left, right):
    """float64 attention with an explicit loop over queries: the definition of the window."""
    frames = query.shape[-2]
    output = torch.empty_like(query, dtype=torch.float64)
    for index in range(frames):
        start, stop = max(0, index - left), min(frames, index + right + 1)
        scores = query[..., index : index + 1, :].double() @ key[..., start:stop, :].double().transpose(-1, -2)
        weights = torch.softmax(scores / math.sqrt(query.shape[-1]), dim=-1)
        output[..., index : index + 1, :] = weights @ value[..., start:stop, :].double()
    return output


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_is_exactly_the_asymmetric_window(implementation):
    config = tiny_config(attention_window_left=2, attention_window_right=5)
    config._attn_implementation = implementation
    model = randomize_(StableCodecModel(config)).eval()
    attention_module = model.encoder.stages[1].transformer.layers[0].attention
    captured = {}

    def capture(module, args, output):
        captured["output"] = output

    hidden = torch.randn(2, 40, 256)
    transformer = model.encoder.stages[1].transformer
    handle = attention_module.register_forward_hook(capture)
    with torch.no_grad():
        transformer(hidden.transpose(1, 2), None)
        # Recompute q, k, v as the module does, then attend by the definition.
        normed = transformer.layers[0].attention_norm(hidden)
        qkv = attention_module.qkv_proj(normed).view(2, 40, 3, 2, 128)
        query, key, value = qkv.transpose(1, 3).unbind(2)
        query, key = attention_module.q_norm(query), attention_module.k_norm(key)
        cos, sin = transformer.rotary_emb(40, hidden.device)
        from transformers_stable_codec.modeling_stable_codec import apply_partial_rotary_pos_emb

        query, key = apply_partial_rotary_pos_emb(query, cos, sin), apply_partial_rotary_pos_emb(key, cos, sin)
        expected = reference_windowed_attention(query, key, value, 2, 5).transpose(1, 2).reshape(2, 40, 256)
        expected = attention_module.o_proj(expected.float())
    handle.remove()
    assert relative_error(captured["output"], expected) < 1e-5


def test_rope_rotates_only_the_leading_channels_and_depends_on_relative_position():
    from transformers_stable_codec.modeling_stable_codec import (
        StableCodecRotaryEmbedding,
        apply_partial_rotary_pos_emb,
    )

    rope = StableCodecRotaryEmbedding(tiny_config())
    cos, sin = rope(12, torch.device("cpu"))
    assert cos.shape == (12, 64)
    query, key = torch.randn(1, 1, 1, 128), torch.randn(1, 1, 1, 128)
    rotated_q = apply_partial_rotary_pos_emb(query.expand(1, 1, 12, 128), cos, sin)
    rotated_k = apply_partial_rotary_pos_emb(key.expand(1, 1, 12, 128), cos, sin)
    assert torch.equal(rotated_q[..., 64:], query.expand(1, 1, 12, 128)[..., 64:])
    scores = rotated_q[0, 0] @ rotated_k[0, 0].T
    # A score depends only on the distance between positions: compare (i, j) with (i + 3, j + 3).
    assert torch.allclose(scores[2, 5], scores[5, 8], atol=1e-5) and not torch.allclose(scores[2, 5], scores[2, 6])


def test_bfloat16_model_keeps_float32_rope_frequencies(tiny_model):
    model_bf16 = StableCodecModel(tiny_model.config).to(torch.bfloat16)
    rope = model_bf16.encoder.stages[1].transformer.rotary_emb
    cos, _ = rope(200, torch.device("cpu"))
    reference, _ = (
        StableCodecModel(tiny_model.config).encoder.stages[1].transformer.rotary_emb(200, torch.device("cpu"))
    )
    assert cos.dtype == torch.float32 and torch.equal(cos, reference)


def test_window_changes_the_output():
    narrow, wide = (
        tiny_config(attention_window_left=3, attention_window_right=4),
        tiny_config(attention_window_left=200, attention_window_right=200),
    )
    torch.manual_seed(1)
    model = randomize_(StableCodecModel(narrow)).eval()
    audio = speechlike(1, 2.0)
    with torch.no_grad():
        windowed = model.encode(audio).latents
        model.config.attention_window_left, model.config.attention_window_right = wide.attention_window
        full = model.encode(audio).latents
        model.config.attention_window_left, model.config.attention_window_right = narrow.attention_window
    assert relative_error(full, windowed) > 1e-3


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_backends_agree_on_cpu(tiny_model, implementation):
    audio = speechlike(2, 1.5)
    tiny_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        expected = tiny_model.encode(audio).latents
        tiny_model.set_attn_implementation(implementation)
        try:
            actual = tiny_model.encode(audio).latents
        finally:
            tiny_model.set_attn_implementation("sdpa")
    assert relative_error(actual, expected) < 1e-5


def test_flex_attention_on_cpu_is_refused():
    model = StableCodecModel(tiny_config())
    model.set_attn_implementation("flex_attention")
    with pytest.raises(ValueError, match="flex_attention runs on CUDA devices only"):
        model.encode(speechlike(1, 0.5))


def test_flash_attention_in_float32_is_refused(tiny_model):
    model = StableCodecModel(tiny_config())
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="float16/bfloat16 only"):
        model.encode(speechlike(1, 0.5))


# --- batching and padding -----------------------------------------------------------------------------------------


def test_each_clip_of_a_padded_batch_gets_the_codes_it_gets_alone(tiny_model):
    lengths = [24000, 13000, 6400]
    clips = [speechlike(1, length / 16000, seed=index)[..., :length] for index, length in enumerate(lengths)]
    batch = torch.zeros(3, 1, max(lengths))
    padding_mask = torch.zeros(3, max(lengths), dtype=torch.long)
    for index, clip in enumerate(clips):
        batch[index, :, : clip.shape[-1]] = clip
        padding_mask[index, : clip.shape[-1]] = 1
    batch[1, :, 13000:] = 0.7  # garbage in the padding must not leak into the real frames
    with torch.no_grad():
        batched = tiny_model.encode(batch, padding_mask=padding_mask, posthoc_bottleneck="4x729_1000bps")
        decoded = tiny_model.decode(batched.audio_codes, batched.audio_codes_mask, "4x729_1000bps")
        for index, clip in enumerate(clips):
            alone = tiny_model.encode(clip, posthoc_bottleneck="4x729_1000bps")
            frames = alone.audio_codes.shape[-1]
            assert int(batched.audio_codes_mask[index].sum()) == frames == math.ceil(lengths[index] / 640)
            assert torch.equal(batched.audio_codes[index, :, :frames], alone.audio_codes[0])
            assert relative_error(batched.latents[index, :, :frames], alone.latents[0]) < 1e-5
            decoded_alone = tiny_model.decode(alone.audio_codes, posthoc_bottleneck="4x729_1000bps").audio_values
            samples = decoded_alone.shape[-1]
            assert relative_error(decoded.audio_values[index, :, :samples], decoded_alone[0]) < 1e-5
            assert not decoded.audio_values[index, :, samples:].any()


def test_padding_inside_a_frame_keeps_that_frame():
    config = tiny_config()
    model = randomize_(StableCodecModel(config)).eval()
    audio = speechlike(1, 1.0)[..., :1000]  # 1.56 frames: padded to 2 frames alone
    with torch.no_grad():
        alone = model.encode(audio)
        padded = torch.nn.functional.pad(audio, (0, 3000))
        mask = torch.zeros(1, 4000, dtype=torch.long)
        mask[:, :1000] = 1
        batched = model.encode(padded, padding_mask=mask)
    assert alone.audio_codes.shape[-1] == 2
    assert batched.audio_codes_mask.tolist() == [[1, 1, 0, 0, 0, 0, 0]]
    assert torch.equal(batched.audio_codes[..., :2], alone.audio_codes)


def test_forward_crops_to_the_input_length_and_matches_encode_then_decode(tiny_model):
    audio = speechlike(2, 1.0)[..., :15000]
    with torch.no_grad():
        output = tiny_model(audio, posthoc_bottleneck="2x15625_700bps")
        encoded = tiny_model.encode(audio, posthoc_bottleneck="2x15625_700bps")
        decoded = tiny_model.decode(encoded.audio_codes, posthoc_bottleneck="2x15625_700bps").audio_values
    assert output.audio_values.shape == (2, 1, 15000)
    assert torch.equal(output.audio_codes, encoded.audio_codes)
    assert relative_error(output.audio_values, decoded[..., :15000]) < 1e-5


# --- bottlenecks --------------------------------------------------------------------------------------------------


def test_fsq_indices_round_trip_and_use_every_level():
    fsq = StableCodecFSQ([3, 5, 4])
    grid = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, n) for n in (3, 5, 4)), indexing="ij"), dim=-1)
    values = grid.reshape(-1, 3).double()
    quantized, indices = fsq.quantize(values + 1e-9)
    assert sorted(indices.tolist()) == list(range(60))
    assert torch.allclose(fsq.dequantize(indices), values, atol=1e-12)
    assert torch.allclose(quantized, values, atol=1e-8)


def test_fsq_rounds_instead_of_truncating():
    fsq = StableCodecFSQ([17] * 6)
    # Just below the level (k + 1) / 16 * 2 - 1 a truncating quantizer lands on k; rounding gives k + 1.
    value = torch.full((1, 6), 2 * 5 / 16 - 1 - 1e-13, dtype=torch.float64)
    _, index = fsq.quantize(value)
    assert (fsq.dequantize(index) - value).abs().max() < 1e-12


def test_residual_fsq_presets_refine_the_training_quantizer():
    torch.manual_seed(0)
    latents = torch.randn(2, 6, 400)
    target = torch.tanh(latents.double())
    errors = []
    for preset in POSTHOC_BOTTLENECK_PRESETS:
        bottleneck = StableCodecResidualFSQ(POSTHOC_BOTTLENECK_PRESETS[preset])
        quantized, codes = bottleneck(latents)
        assert codes.shape == (2, len(POSTHOC_BOTTLENECK_PRESETS[preset]), 400) and codes.dtype == torch.long
        assert torch.allclose(bottleneck.decode(codes).float(), quantized, atol=1e-6)
        errors.append(float((bottleneck.decode(codes) - target).abs().max()))
    # Step sizes 0.4 (6 levels), 0.5 * 0.25 / 2 (5 levels, 2 stages), 1/8 / 2 (3 levels, 4 stages): error <= step/2.
    assert errors[0] <= 0.2 + 1e-9 and errors[1] <= 0.0625 + 1e-9 and errors[2] <= 0.0625 + 1e-9


def test_explicit_stages_equal_the_preset(tiny_model):
    audio = speechlike(1, 1.0)
    with torch.no_grad():
        preset = tiny_model.encode(audio, posthoc_bottleneck="2x15625_700bps").audio_codes
        explicit = tiny_model.encode(audio, posthoc_bottleneck=[([5] * 6, 1.0), ([5] * 6, 0.25)]).audio_codes
    assert torch.equal(preset, explicit)


def test_training_mode_fsq_dithers_and_passes_gradients():
    model = randomize_(StableCodecModel(tiny_config(fsq_noise_dropout=0.0))).train()
    audio = speechlike(2, 0.5)
    output = model(audio)
    squashed = torch.tanh(output.latents.double())
    step = 2 / 16
    offsets = (output.quantized_latents.double() - squashed).abs()
    assert 0 < float(offsets.max()) <= step / 2 + 1e-6  # dither: uniform noise of one quantization step
    output.audio_values.pow(2).mean().backward()
    assert model.encoder.input_conv.parametrizations.weight.original1.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = randomize_(StableCodecModel(tiny_config(fsq_noise_dropout=1.0))).train()
    audio = speechlike(1, 0.5)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            enable_activation_checkpointing(model)
        torch.manual_seed(0)
        model(audio).audio_values.pow(2).mean().backward()
        grads.append(model.encoder.stages[1].transformer.layers[0].attention.qkv_proj.weight.grad.clone())
    assert model.encoder.stages[1].transformer.layers[0].gradient_checkpointing
    assert relative_error(grads[1], grads[0]) < 1e-5


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audio, message",
    [
        (torch.zeros(1, 1, 0), "empty"),
        (torch.full((1, 1, 640), float("nan")), "NaN"),
        (torch.zeros(1, 2, 640), "mono"),
        (torch.zeros(640), r"\(batch_size, 1, num_samples\)"),
        (torch.zeros(1, 1, 640, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_audio_raises_a_clear_error(tiny_model, audio, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.encode(audio)


def test_bad_codes_raise_a_clear_error(tiny_model):
    codes = torch.zeros(1, 2, 10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(batch_size, 1, frames\)"):
        tiny_model.decode(codes)
    with pytest.raises(ValueError, match=r"outside the codebook .*\[0, 15624\]"):
        tiny_model.decode(codes + 15625, posthoc_bottleneck="2x15625_700bps")
    with pytest.raises(ValueError, match="outside the codebook"):
        tiny_model.decode(torch.full((1, 1, 10), -1))
    with pytest.raises(ValueError, match="integer tensor"):
        tiny_model.decode(codes.float(), posthoc_bottleneck="2x15625_700bps")
    with pytest.raises(ValueError, match="Unknown post-hoc bottleneck preset"):
        tiny_model.decode(codes, posthoc_bottleneck="3x10_500bps")
    with pytest.raises(ValueError, match="6 levels"):
        tiny_model.encode(speechlike(1, 0.1), posthoc_bottleneck=[([5] * 4, 1.0)])


def test_mismatched_padding_mask_raises(tiny_model):
    with pytest.raises(ValueError, match="padding_mask"):
        tiny_model.encode(torch.zeros(2, 1, 640), padding_mask=torch.ones(2, 320))


# --- compilation and dtypes ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_encode_and_decode_have_no_graph_breaks(tiny_model):
    audio = speechlike(1, 1.0)
    torch._dynamo.reset()
    with torch.no_grad():
        eager_codes = tiny_model.encode(audio).audio_codes
        compiled_encode = torch.compile(tiny_model.encode, fullgraph=True)
        compiled_decode = torch.compile(tiny_model.decode, fullgraph=True)
        codes = compiled_encode(audio).audio_codes
        audio_values = compiled_decode(codes).audio_values
        expected = tiny_model.decode(eager_codes).audio_values
    assert (codes == eager_codes).float().mean() > 0.999
    assert relative_error(audio_values, expected) < 1e-4


@pytest.mark.slow
def test_frozen_compile_prepacks_every_linear_and_matches_eager(tiny_model):
    """The CPU recipe (docs/stable_codec.md): with inductor's freezing every projection runs on weights prepacked for
    MKL / oneDNN (none is left to a plain matmul that repacks its weight on every call), with eager's results."""
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    audio = speechlike(1, 1.0)
    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(freezing=True):
        expected = tiny_model.encode(audio)
        encoded, generated = run_and_get_code(torch.compile(tiny_model.encode, fullgraph=True), audio)
        decoded = torch.compile(tiny_model.decode, fullgraph=True)(expected.audio_codes).audio_values
        expected_audio = tiny_model.decode(expected.audio_codes).audio_values
    code = "\n".join(generated)
    num_linears = sum(isinstance(module, torch.nn.Linear) for module in tiny_model.encoder.modules())
    packed = code.count("torch.ops.mkl._mkl_linear.default(") + code.count(
        "torch.ops.mkldnn._linear_pointwise.default("
    )
    assert packed == num_linears and "extern_kernels.mm(" not in code and "extern_kernels.addmm(" not in code
    assert relative_error(encoded.latents, expected.latents) < 1e-5
    assert relative_error(decoded, expected_audio) < 1e-5


@pytest.mark.slow
def test_compiled_model_computes_each_stage_rotary_table_once(tiny_model):
    """Inductor inlines index-only code into its consumers: were the rotary table plain tensor code, every layer's
    query and key kernel would recompute float64 cosines per element (a sixth of the GPU time at paper scale)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    with torch.no_grad():
        _, generated = run_and_get_code(torch.compile(tiny_model.encode, fullgraph=True), speechlike(1, 1.0))
    code = "\n".join(generated)
    stages_with_layers = sum(len(stage.transformer.layers) > 0 for stage in tiny_model.encoder.stages)
    assert code.count("rotary_cos_sin.default(") == stages_with_layers
    assert "cos(" not in code


def test_bfloat16_on_cpu_is_close_to_float32(tiny_model):
    audio = speechlike(1, 1.0)
    model_bf16 = StableCodecModel(tiny_model.config).to(torch.bfloat16).eval()
    model_bf16.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        reference = tiny_model.encode(audio).latents
        latents = model_bf16.encode(audio.bfloat16()).latents
    assert latents.dtype == torch.bfloat16
    assert relative_error(latents.float(), reference) < 5e-2
    # float32 audio from the feature extractor is cast to the model's dtype, not refused.
    with torch.no_grad():
        from_float32 = model_bf16.encode(audio).latents
    assert torch.equal(from_float32, latents)


# --- flash attention wiring, with a stand-in kernel --------------------------------------------------------------


def stand_in_flash_kernels(returns_lse: bool):
    """flash-attn's `flash_attn_func` / `flash_attn_varlen_func` semantics (window_size=(left, right): query i sees
    keys i - left .. i + right), in plain torch, to check how the model calls them where flash-attn is absent.
    FlashAttention-4's return `(output, lse)` (`returns_lse`), flash-attn 2's the output alone."""

    def attend(query, key, value, softmax_scale, window_size):  # (frames, heads, dim)
        frames = query.shape[0]
        positions = torch.arange(frames)
        allowed = (positions[None, :] >= positions[:, None] - window_size[0]) & (
            positions[None, :] <= positions[:, None] + window_size[1]
        )
        scores = torch.einsum("qhd,khd->hqk", query.float(), key.float()) * softmax_scale
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        return torch.einsum("hqk,khd->qhd", weights, value.float()).to(query.dtype)

    def flash_fn(query, key, value, softmax_scale, causal, window_size):
        assert not causal and query.dtype in (torch.float16, torch.bfloat16)
        output = torch.stack([attend(q, k, v, softmax_scale, window_size) for q, k, v in zip(query, key, value)])
        return (output, None) if returns_lse else output

    def flash_varlen_fn(
        query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_size
    ):
        assert torch.equal(cu_seqlens_q, cu_seqlens_k) and cu_seqlens_q.dtype == torch.int32
        bounds = cu_seqlens_q.tolist()
        output = torch.cat(
            [attend(query[a:b], key[a:b], value[a:b], softmax_scale, window_size) for a, b in zip(bounds, bounds[1:])]
        )
        return (output, None) if returns_lse else output

    return flash_fn, flash_varlen_fn


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flash_attention_4"])
def test_flash_attention_path_computes_the_window_and_packs_padded_clips(implementation, tiny_model, monkeypatch):
    import transformers.modeling_flash_attention_utils as flash_utils

    kernels = stand_in_flash_kernels(returns_lse=implementation == "flash_attention_4")
    monkeypatch.setattr(
        flash_utils, "lazy_import_flash_attention", lambda implementation: ((*kernels, None, None, None), None)
    )
    model = StableCodecModel(tiny_model.config).to(torch.bfloat16).eval()
    model.load_state_dict(tiny_model.state_dict())
    batch = speechlike(2, 1.0).bfloat16()
    padding_mask = torch.ones(2, 16000, dtype=torch.long)
    padding_mask[1, 9000:] = 0
    with torch.no_grad():
        model.config._attn_implementation = "sdpa"
        expected = model.encode(batch, padding_mask=padding_mask).latents
        model.config._attn_implementation = implementation
        padded = model.encode(batch, padding_mask=padding_mask).latents
        unpadded = model.encode(batch[:1]).latents
        model.config._attn_implementation = "sdpa"
        expected_unpadded = model.encode(batch[:1]).latents
    assert relative_error(padded[:, :, :15].float(), expected[:, :, :15].float()) < 2e-2
    assert relative_error(unpadded.float(), expected_unpadded.float()) < 2e-2


# --- local attention blocks: exact window in linear memory ---------------------------------------------------------


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_blocked_attention_equals_the_full_band_mask_with_padding(implementation, monkeypatch):
    from transformers_stable_codec.modeling_stable_codec import LocalAttentionBlocks

    model = randomize_(StableCodecModel(tiny_config(attention_window_left=5, attention_window_right=9))).eval()
    model.set_attn_implementation(implementation)
    transformer = model.encoder.stages[1].transformer
    hidden = torch.randn(2, 256, 700)
    frame_is_valid = torch.ones(2, 700, dtype=torch.bool)
    frame_is_valid[1, 333:] = False
    with torch.no_grad():
        layout = transformer.attention_layout(hidden.transpose(1, 2), frame_is_valid)
        assert layout.blocks is not None and layout.blocks.num_blocks == 11  # blocks of 64 frames
        # Memory linear in length: the mask covers blocks x block_size x (block_size + window), not frames^2.
        assert layout.attention_mask.numel() == 2 * 11 * 64 * (64 + 14)
        blocked = transformer(hidden, frame_is_valid)
        monkeypatch.setattr(LocalAttentionBlocks, "for_sequence", classmethod(lambda cls, *args: None))
        full = transformer(hidden, frame_is_valid)
    assert torch.isfinite(blocked).all()
    assert relative_error(blocked[0], full[0]) < 1e-5
    assert relative_error(blocked[1, :, :333], full[1, :, :333]) < 1e-5


def test_blocked_attention_gradients_are_finite_and_match(monkeypatch):
    from transformers_stable_codec.modeling_stable_codec import LocalAttentionBlocks

    model = randomize_(StableCodecModel(tiny_config(attention_window_left=3, attention_window_right=4))).train()
    transformer = model.encoder.stages[1].transformer
    hidden = torch.randn(1, 256, 300, requires_grad=True)
    gradients = []
    for blocked in (True, False):
        if not blocked:
            monkeypatch.setattr(LocalAttentionBlocks, "for_sequence", classmethod(lambda cls, *args: None))
        hidden.grad = None
        transformer(hidden, None).pow(2).mean().backward()
        gradients.append(hidden.grad.clone())
    assert torch.isfinite(gradients[0]).all() and relative_error(gradients[0], gradients[1]) < 1e-5


# --- flex attention's block mask -----------------------------------------------------------------------------------


@pytest.mark.parametrize("frames, left, right", [(500, 63, 64), (250, 63, 64), (300, 10, 5), (1000, 200, 100)])
def test_flex_block_mask_lists_the_blocks_that_the_dense_mask_touches(frames, left, right):
    """Built from block bounds, the mask must hold exactly the key blocks that torch's `create_block_mask` finds by
    evaluating the window frame by frame: one too few drops keys, one too many wastes a tile."""
    from torch.nn.attention.flex_attention import create_block_mask

    from transformers_stable_codec.modeling_stable_codec import sliding_window_block_mask, sliding_window_mask_function

    mask_function = sliding_window_mask_function(left, right, None)
    ours = sliding_window_block_mask(frames, left, right, mask_function, torch.device("cpu"))
    reference = create_block_mask(mask_function, 1, 1, frames, frames, device="cpu")
    assert torch.equal(ours.to_dense(), reference.to_dense())
    assert ours.seq_lengths == (frames, frames) and ours.mask_mod is mask_function
