"""Low-precision inference (transformers_stable_codec.quantization) on CPU: which layers torchao quantizes, what int8
costs against fp32 on the demo model, the save / load round trip, and the errors for fp8 where it cannot run."""

import re

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize


pytest.importorskip("torchao")

from tests.model_helpers import fold_weight_norms, speechlike, tiny_config  # noqa: E402
from transformers_stable_codec import StableCodecModel  # noqa: E402
from transformers_stable_codec.command_support import default_model  # noqa: E402
from transformers_stable_codec.quantization import (  # noqa: E402
    STATIC_INT8_LAYERS,
    check_device,
    compile_int8_static,
    quantization_config,
    quantize_model,
    quantized_layer_names,
    torchao_config,
)


PROJECTIONS = ("attention.qkv_proj", "attention.o_proj", "feed_forward.input_proj", "feed_forward.output_proj")


def transformer_projections(config) -> set[str]:
    """The names the quantized layers must have: four projections in every transformer layer of both sides."""
    names = set()
    for side, depths in (("encoder", config.transformer_depths), ("decoder", config.transformer_depths[::-1])):
        for stage, depth in enumerate(depths):
            for layer in range(depth):
                names |= {f"{side}.stages.{stage}.transformer.layers.{layer}.{name}" for name in PROJECTIONS}
    return names


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


@pytest.fixture(scope="module")
def demo_fp32():
    return StableCodecModel.from_pretrained(default_model()).eval()


@pytest.fixture(scope="module")
def demo_int8():
    """What a user writes: int8 through transformers' TorchAoConfig while loading."""
    return StableCodecModel.from_pretrained(default_model(), quantization_config=quantization_config("int8")).eval()


def test_int8_quantizes_exactly_the_transformer_projections():
    torch.manual_seed(0)
    model = StableCodecModel(tiny_config()).eval()
    quantized = quantize_model(model, "int8")
    assert set(quantized) == transformer_projections(model.config)
    assert len(quantized) == 4 * 2 * sum(model.config.transformer_depths)
    plain = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d))]
    assert plain and not set(plain) & set(quantized)
    # The convolutions, norms and LayerScales keep plain float32 tensors.
    for name, parameter in model.named_parameters():
        if not any(name.startswith(layer + ".") for layer in quantized):
            assert type(parameter.data) is torch.Tensor and parameter.dtype == torch.float32, name


def test_from_pretrained_int8_quantizes_the_same_layers(demo_int8):
    assert set(quantized_layer_names(demo_int8)) == transformer_projections(demo_int8.config)


@torch.inference_mode()
def test_int8_codes_and_latents_stay_close_to_fp32(demo_fp32, demo_int8):
    """Measured on these clips: 83 % of the training-FSQ tokens equal (a token changes when any of its six channels
    crosses a level boundary), latents 1.1e-2 off. The lower bound shows that int8 really ran."""
    audio = speechlike(2, 3.0, seed=1)
    expected, actual = demo_fp32.encode(audio), demo_int8.encode(audio)
    agreement = (actual.audio_codes == expected.audio_codes).double().mean().item()
    error = relative_error(actual.latents, expected.latents)
    assert agreement >= 0.70, agreement
    assert 1e-3 < error < 0.025, error
    decoded = demo_int8.decode(expected.audio_codes).audio_values
    assert relative_error(decoded, demo_fp32.decode(expected.audio_codes).audio_values) < 0.05


def test_int8_save_and_load_round_trip(demo_int8, tmp_path):
    demo_int8.save_pretrained(tmp_path)  # outside inference mode: torchao's tensors cannot be saved from it
    reloaded = StableCodecModel.from_pretrained(tmp_path).eval()
    assert set(quantized_layer_names(reloaded)) == transformer_projections(reloaded.config)
    audio = speechlike(1, 2.0, seed=2)
    with torch.inference_mode():
        expected, actual = demo_int8.encode(audio), reloaded.encode(audio)
    assert torch.equal(actual.audio_codes, expected.audio_codes)
    assert torch.equal(actual.latents, expected.latents)


def test_layers_the_kernels_cannot_take_stay_in_high_precision():
    """Width 40 (not a multiple of 16): no projection fits the low-precision matmuls, so none is quantized, and the
    TorchAoConfig names them all in modules_to_not_convert."""
    config = tiny_config(hidden_size=40, head_dim=40, channel_multipliers=[1, 1])
    torch.manual_seed(0)
    model = StableCodecModel(config).eval()
    assert set(quantization_config("int8", config).modules_to_not_convert) == transformer_projections(config)
    assert quantize_model(model, "int8") == []
    assert quantization_config("int8", tiny_config()).modules_to_not_convert is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp8_on_a_cpu_is_refused_clearly(tmp_path):
    torch.manual_seed(0)
    model = StableCodecModel(tiny_config()).to(torch.bfloat16)
    with pytest.raises(ValueError, match="compute capability 8.9 or newer"):
        quantize_model(model, "fp8")
    assert quantized_layer_names(model) == []  # refused before anything changed
    with pytest.raises(ValueError, match="On CPU use int8"):
        StableCodecModel.from_pretrained(
            default_model(), dtype=torch.bfloat16, quantization_config=quantization_config("fp8")
        )


def test_fp8_needs_bfloat16_activations():
    with pytest.raises(ValueError, match="Pass dtype=torch.bfloat16"):
        check_device("fp8", "cuda", torch.float32)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="Unknown quantized precision 'int4'"):
        quantization_config("int4")


@pytest.mark.slow
def test_compiled_int8_fuses_activation_quantization_into_the_layer_norm():
    """The pre-norm block as the model runs it, compiled: the activations' per-token scale (amax / amin) and cast
    to int8 are computed in the LayerNorm's kernel, and the output's rescale and bias in one kernel after the int8
    matmul, so quantizing adds no pass over the activations of its own."""
    from torch._inductor.utils import run_and_get_code
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    block = nn.Sequential(nn.LayerNorm(256), nn.Linear(256, 512)).bfloat16().eval()
    quantize_(block, torchao_config("int8"))  # quantize_model's filter wants a model's layer names
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(block, fullgraph=True), torch.randn(64, 256).bfloat16())
    source = "\n".join(code)
    kernels = re.findall(r"(cpp_fused_\w+) = async_compile", source)
    assert "_int_mm(" in source
    assert len(kernels) == 2, kernels
    assert "native_layer_norm" in kernels[0] and "amax" in kernels[0], kernels


@pytest.mark.slow
def test_frozen_compile_hands_the_graph_no_quantized_weights_and_keeps_the_codes(monkeypatch):
    """Compiled as usual, every torchao weight is a tensor-subclass input of the graph that each call guards and
    unwraps in Python; `frozen_compile` makes them constants of the graph (the graph's only input is the audio),
    with the codes of the plain compile. The convolutions' weight norms are folded first: freezing computes them
    once, in eager kernels whose bf16 rounding differs from the fused kernel's (4 % of the codes here otherwise;
    that is freezing's, in bf16 too, not the quantized layers')."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torchao.utils import TorchAOBaseTensor

    from transformers_stable_codec.quantization import frozen_compile

    torch.manual_seed(0)
    model = StableCodecModel(tiny_config()).to(torch.bfloat16).eval()
    fold_weight_norms(model)
    layers = len(quantize_model(model, "int8"))
    audio = speechlike(1, 1.0, seed=3).to(torch.bfloat16)
    compile_ = torch.compile
    graphs = {}

    def recording(name):
        counter = CompileCounterWithBackend("inductor")  # inductor, with the graph dynamo hands it recorded
        monkeypatch.setattr(torch, "compile", lambda *args, **options: compile_(*args, backend=counter, **options))
        graphs[name] = counter.graphs

    torch._dynamo.reset()
    recording("plain")
    with torch.no_grad():
        expected = torch.compile(model.encode, fullgraph=True, dynamic=False)(audio).audio_codes
    # A new cache: the plain graph's guards (tensor checks on inputs) would also accept the frozen call.
    torch._dynamo.reset()
    recording("frozen")
    codes = frozen_compile(model.encode, fullgraph=True, dynamic=False)(audio).audio_codes

    def inputs(graph):
        return [node.meta["example_value"] for node in graph.graph.find_nodes(op="placeholder")]

    def constants(graph):
        return [getattr(graph, node.target) for node in graph.graph.find_nodes(op="get_attr")]

    (plain,), (frozen,) = graphs["plain"], graphs["frozen"]
    encoder_layers = layers // 2  # the encoder's half of the quantized projections
    assert sum(isinstance(value, TorchAOBaseTensor) for value in inputs(plain)) == encoder_layers
    assert not any(isinstance(value, TorchAOBaseTensor) for value in inputs(frozen))
    assert len(inputs(frozen)) == 1  # the audio
    assert sum(isinstance(value, TorchAOBaseTensor) for value in constants(frozen)) == encoder_layers
    assert torch.equal(codes, expected)


# Static int8 (compile_int8_static) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_static_int8(demo_fp32):
    """The demo model's static int8 codec for two 3 s clips, calibrated on other speech-like audio, with the code
    inductor generated for it."""
    from torch._inductor.utils import run_and_get_code

    calibration = [speechlike(2, 3.0, seed=seed) for seed in (5, 6)]
    with torch.inference_mode():  # where inference code calls it from (export and calibration run outside it)
        codec, code = run_and_get_code(lambda: compile_int8_static(demo_fp32, calibration))
    return codec, "\n".join(code)


@pytest.mark.slow
def test_static_int8_runs_the_layer_norm_fed_projections_as_onednn_int8_matmuls(demo_static_int8, demo_fp32):
    """Each QKV and SwiGLU input projection (20 in the demo model) is one oneDNN quantized linear (int8 activations
    and weights, the dequantize fused into it), the other projections stay bf16 linears, and the activations'
    quantizing has no op of its own: it is computed in inductor's kernels, the LayerNorm's among them."""
    codec, source = demo_static_int8
    expected = {name for name in transformer_projections(demo_fp32.config) if name.endswith(STATIC_INT8_LAYERS)}
    assert set(codec.quantized_layers) == expected and len(expected) == 20
    assert len(re.findall(r"= torch\.ops\.onednn\.qlinear_pointwise\.", source)) == 20
    # o_proj and output_proj stay bf16: oneDNN linears, or a batched matmul with the weight where a projection's
    # input is a strided view.
    float_linears = re.findall(
        r"= torch\.ops\.mkldnn\._linear_pointwise\.|extern_kernels\.bmm\(.*_frozen_param", source
    )
    assert len(float_linears) == 20
    assert not re.search(r"extern_kernels\.(mm|addmm)\(|aten\.(mm|addmm)\.", source)
    calls = [line for line in source.splitlines() if not line.lstrip().startswith("#")]  # not the comments
    assert not [line for line in calls if "quantized_decomposed" in line]
    assert re.search(r"cpp_fused\w*native_layer_norm\w*quantize_per_tensor", source)


@pytest.mark.slow
@torch.inference_mode()
def test_static_int8_codes_and_audio_stay_close_to_fp32(demo_static_int8, demo_fp32):
    """Measured on these clips (calibrated on two others): 85 % of the training-FSQ tokens equal to fp32's (87 % for
    the 700 bps preset), latents 1.2e-2 off, decoded audio 0.9e-2; dynamic int8 gives 83 % and 1.1e-2 here."""
    codec, _ = demo_static_int8
    audio = speechlike(2, 3.0, seed=1)
    expected, actual = demo_fp32.encode(audio), codec.encode(audio)
    agreement = (actual.audio_codes == expected.audio_codes).double().mean().item()
    error = relative_error(actual.latents, expected.latents)
    posthoc = codec.encode(audio, posthoc_bottleneck="2x15625_700bps").audio_codes
    posthoc_expected = demo_fp32.encode(audio, posthoc_bottleneck="2x15625_700bps").audio_codes
    decoded = codec.decode(expected.audio_codes).audio_values
    assert agreement >= 0.75, agreement
    assert (posthoc == posthoc_expected).double().mean().item() >= 0.75
    assert 2e-3 < error < 0.025, error
    assert decoded.dtype == torch.float32 and decoded.shape == audio.shape
    assert relative_error(decoded, demo_fp32.decode(expected.audio_codes).audio_values) < 0.03


@pytest.mark.slow
def test_static_int8_takes_only_its_shape_and_leaves_the_model_as_it_was(demo_static_int8, demo_fp32):
    codec, _ = demo_static_int8
    with pytest.raises(ValueError, match=r"compiled for input_values of shape \(2, 1, 48000\)"):
        codec.encode(speechlike(1, 3.0))
    codes = demo_fp32.encode(speechlike(2, 2.0)).audio_codes
    with pytest.raises(ValueError, match="decodes 2 clip\\(s\\) of 75 frames"):
        codec.decode(codes)
    # The codec works on copies: the model keeps its weight norms (whose class a copy shares) and its results.
    assert parametrize.is_parametrized(demo_fp32.encoder.input_conv, "weight")
    audio = speechlike(1, 1.0, seed=3)
    fresh = StableCodecModel.from_pretrained(default_model()).eval()
    with torch.inference_mode():
        assert torch.equal(demo_fp32.encode(audio).latents, fresh.encode(audio).latents)


def test_static_int8_refuses_what_it_cannot_compile():
    torch.manual_seed(0)
    model = StableCodecModel(tiny_config()).eval()
    audio = speechlike(1, 1.0)
    with pytest.raises(TypeError, match="takes a StableCodecModel"):
        compile_int8_static(model.encoder, audio)
    with pytest.raises(ValueError, match="quantizes a float32 model on the CPU"):
        compile_int8_static(StableCodecModel(tiny_config()).to(torch.bfloat16), audio)
    with pytest.raises(ValueError, match="call model.eval\\(\\) first"):
        compile_int8_static(StableCodecModel(tiny_config()).train(), audio)
    with pytest.raises(ValueError, match="multiple of hop_length \\(640 samples\\)"):
        compile_int8_static(model, speechlike(1, 1.01))
    with pytest.raises(ValueError, match="must have one shape"):
        compile_int8_static(model, [audio, speechlike(2, 1.0)])
    with pytest.raises(ValueError, match="float32 CPU tensors of shape \\(batch_size, 1, num_samples\\)"):
        compile_int8_static(model, audio[:, 0])
    with pytest.raises(ValueError, match="all-zero"):
        compile_int8_static(model, torch.zeros_like(audio))
    quantize_model(model, "int8")
    with pytest.raises(ValueError, match="already quantized"):
        compile_int8_static(model, audio)
