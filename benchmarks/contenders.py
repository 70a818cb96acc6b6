"""The codecs the benchmark measures, each behind the same small interface: build it on a device, give it a dtype
(and, for ours, an attention backend and a compile mode), turn a waveform batch into its encode inputs, encode them
to codes, decode codes to a waveform.

- `stable-codec`: this package's `StableCodecModel` (random weights) from the benchmark config.
- `original`: stable-codec 0.1.2 on stable-audio-tools 0.0.17, built in this process (see `original_codec.py`).
- `mimi`, `dac`, `xcodec2`: transformers' `MimiModel`, `DacModel`, `Xcodec2Model` with default configs and random
  weights (tiny configs with `--config tiny`), each at its own sampling rate, through its own encode / decode API.
"""

import contextlib
import itertools
import types

import torch

from benchmarks.original_codec import build_original, original_model_config
from transformers_stable_codec import StableCodecConfig, StableCodecModel
from transformers_stable_codec.modeling_stable_codec import LocalAttentionBlocks
from transformers_stable_codec.quantization import frozen_compile


CONTENDER_LABELS = {
    "stable-codec": "Stable Codec (ours)",
    "original": "original (stable-audio-tools 0.0.17)",
    "mimi": "Mimi (transformers)",
    "dac": "DAC (transformers)",
    "xcodec2": "Xcodec2 (transformers)",
}


# Compile modes that add inductor's freezing, each with the torch.compile mode it runs in.
FROZEN_MODES = {"freezing": "default", "reduce-overhead+freezing": "reduce-overhead"}
CUDA_GRAPH_MODES = ("reduce-overhead", "reduce-overhead+freezing", "max-autotune")
_compiled_functions = itertools.count()


def compile_codec_functions(model: StableCodecModel, mode: str):
    """How `--compile` applies to our model: `(encode, decode)` callables. The one place to change it. `freezing`
    (the CPU recipe) and `reduce-overhead+freezing` compile with inductor's freezing (`frozen_compile`: the weights
    become constants, which also removes the per-call host cost of torchao's quantized weights)."""
    if mode == "none":
        return model.encode, model.decode
    encode, decode = own_function(model.encode), own_function(model.decode)
    if mode in FROZEN_MODES:
        options = dict(mode=FROZEN_MODES[mode], fullgraph=True, dynamic=False)
        return frozen_compile(encode, **options), frozen_compile(decode, **options)
    options = dict(mode=mode, fullgraph=True, dynamic=False)
    return torch.compile(encode, **options), torch.compile(decode, **options)


def own_function(method):
    """`method`, called through a function whose code object is its own. Dynamo keeps compiled graphs per code
    object, and `encode` and `decode` of every model are one (transformers' output decorator): two variants of a
    model in one process would share a cache, so that a call also evaluates the other variants' guards, and an
    unfrozen graph (which guards its weights' metadata, not their identity) would also serve a frozen variant of
    another model."""

    def call(*args, **kwargs):
        return method(*args, **kwargs)

    code = call.__code__.replace(co_name=f"{method.__name__}_{next(_compiled_functions)}")
    return types.FunctionType(code, call.__globals__, code.co_name, None, call.__closure__)


class Contender:
    """One codec on one device. `prepare` pads the waveform to whole frames as the codec's feature extractor does
    and returns the positional inputs of `encode`."""

    sampling_rate = 16000
    hop_length = 1

    def __init__(self, model: torch.nn.Module, notes: list[str] | None = None):
        self.model = model
        self.notes = list(notes or [])

    @property
    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    def attention_options(self, requested: list[str]) -> list[str]:
        """The attention settings to measure: ours takes the requested backends, the others have their own."""
        implementation = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        return [implementation or "none"]

    def skip_reason(self, attention: str, dtype: torch.dtype, compile_mode: str, device: torch.device) -> str | None:
        return None

    def configure(self, attention: str, compile_mode: str) -> None:
        pass

    def to_dtype(self, dtype: torch.dtype) -> None:
        self.model.to(dtype)

    def prepare(self, audio: torch.Tensor) -> tuple:
        return (audio,)

    def encode(self, *inputs) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_for_decoding(self, *inputs) -> torch.Tensor:
        """Codes to feed the decode workload (never compiled)."""
        return self.encode(*inputs)

    def flop_counting(self):
        """Context in which `encode` / `decode` run the path whose FLOPs are counted."""
        return contextlib.nullcontext()

    def flop_note(self) -> str:
        return "FlopCounterMode over one eager encode / decode of one clip of the scenario's length"


class StableCodecContender(Contender):
    def __init__(self, model: StableCodecModel):
        super().__init__(model)
        self.sampling_rate = model.config.sampling_rate
        self.hop_length = model.config.hop_length
        self._encode, self._decode = model.encode, model.decode
        self._cuda_graphs = False

    def attention_options(self, requested: list[str]) -> list[str]:
        return list(requested)

    def skip_reason(self, attention, dtype, compile_mode, device):
        if attention == "flex_attention" and device.type == "cpu":
            return "our model refuses flex_attention on CPU (inductor's CPU flex kernels fail to compile here)"
        if attention.startswith("flash_attention"):
            from transformers.utils import is_flash_attn_2_available, is_flash_attn_4_available

            available = is_flash_attn_4_available if attention == "flash_attention_4" else is_flash_attn_2_available
            if not available():
                return f"{attention}'s package is not installed (or no CUDA device)"
            if dtype not in (torch.float16, torch.bfloat16):
                return "flash attention computes in fp16/bf16 only"
        return None

    def configure(self, attention: str, compile_mode: str) -> None:
        if attention != self.model.config._attn_implementation:
            self.model.set_attn_implementation(attention)
        self._encode, self._decode = compile_codec_functions(self.model, compile_mode)
        self._cuda_graphs = compile_mode in CUDA_GRAPH_MODES

    def encode(self, audio):
        if not self._cuda_graphs:
            return self._encode(audio).audio_codes
        # Each call is a step of its own, and the codes leave the graph's memory, which the next replay overwrites
        # (the encode + decode workload passes them on; profile_kernels.py calls this too).
        torch.compiler.cudagraph_mark_step_begin()
        return self._encode(audio).audio_codes.clone()

    def decode(self, codes):
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self._decode(codes).audio_values

    def encode_for_decoding(self, audio):
        return self.model.encode(audio).audio_codes

    @contextlib.contextmanager
    def flop_counting(self):
        """Counts the sdpa path, uncompiled: flex and flash attention compute the same window, but the counter sees
        flex's mask as dense and flash-attn's kernels not at all."""
        encode, decode, attention = self._encode, self._decode, self.model.config._attn_implementation
        self._encode, self._decode = self.model.encode, self.model.decode
        if attention != "sdpa":
            self.model.set_attn_implementation("sdpa")
        try:
            yield
        finally:
            if attention != "sdpa":
                self.model.set_attn_implementation(attention)
            self._encode, self._decode = encode, decode

    def flop_note(self) -> str:
        left, right = self.model.config.attention_window
        blocks = LocalAttentionBlocks.for_sequence(2**31, left, right).block_size  # the model's own rule
        return (
            "FlopCounterMode over one uncompiled encode / decode on the sdpa path (for every backend): the matmuls "
            f"and convolutions, and attention as computed there, in query blocks of {blocks} frames x "
            f"{blocks + left + right} keys ({left + right + 1} of them in the window); a stage with at most "
            f"{blocks + left + right} frames attends over all its frames under a mask. The paper's figure for the "
            "paper-scale model: about 36 GFLOP per audio-second each for encode and decode, attention ~2% of it "
            "with the window alone."
        )


class OriginalContender(Contender):
    def __init__(self, codec, sampling_rate: int, hop_length: int):
        super().__init__(codec.autoencoder, codec.notes)
        self.codec = codec
        self.sampling_rate, self.hop_length = sampling_rate, hop_length

    def attention_options(self, requested):
        return [self.codec.attention_label]

    def encode(self, audio):
        return self.codec.encode(audio)

    def decode(self, codes):
        return self.codec.decode(codes)

    def flop_note(self) -> str:
        return super().flop_note() + "; full attention over every frame of the clip (cost grows with clip length)"


class MimiContender(Contender):
    def __init__(self, model):
        super().__init__(model)
        self.sampling_rate = model.config.sampling_rate
        self.hop_length = round(model.config.sampling_rate / model.config.frame_rate)

    def to_dtype(self, dtype: torch.dtype) -> None:
        self.model.to(dtype)
        # Mimi's codebooks cache their embedding on first use; `.to()` does not reach the cache.
        for module in self.model.modules():
            if hasattr(module, "_embed"):
                module._embed = None

    def encode(self, audio):
        return self.model.encode(audio).audio_codes

    def decode(self, codes):
        return self.model.decode(codes).audio_values


class DacContender(Contender):
    def __init__(self, model):
        super().__init__(model)
        self.sampling_rate = model.config.sampling_rate
        self.hop_length = model.config.hop_length

    def encode(self, audio):
        return self.model.encode(audio).audio_codes

    def decode(self, codes):
        return self.model.decode(audio_codes=codes).audio_values


class Xcodec2Contender(Contender):
    """Xcodec2 also takes the semantic encoder's input: 80 log-mel bins stacked in pairs (160 features) per frame of
    `hop_length` samples, which its feature extractor computes on the CPU. That preprocessing is not timed (as our
    loudness normalization is not): the features are standard-normal noise of the shape the feature extractor gives
    (its features are normalized per bin); the model's concatenation of semantic and acoustic frames checks it."""

    num_semantic_features = 160

    def __init__(self, model):
        super().__init__(
            model, ["semantic features: standard-normal noise of the feature extractor's shape (not timed)"]
        )
        self.sampling_rate = model.config.sampling_rate
        self.hop_length = model.config.hop_length

    def prepare(self, audio):
        generator = torch.Generator(device=audio.device).manual_seed(0)
        frames = audio.shape[-1] // self.hop_length
        features = torch.randn(
            audio.shape[0], frames, self.num_semantic_features, generator=generator, device=audio.device
        )
        return audio, features.to(audio.dtype)

    def encode(self, audio, features):
        return self.model.encode(audio, input_features=features).audio_codes

    def decode(self, codes):
        return self.model.decode(audio_codes=codes).audio_values


def peer_model(name: str, tiny: bool) -> torch.nn.Module:
    """transformers' model with its default config (or a tiny one), random weights, eval mode."""
    from transformers import DacConfig, DacModel, MimiConfig, MimiModel

    if name == "mimi":
        options = {}
        if tiny:
            options = dict(
                hidden_size=64,
                num_filters=8,
                num_residual_layers=1,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=32,
                intermediate_size=128,
                codebook_dim=32,
                vector_quantization_hidden_dimension=32,
                codebook_size=64,
                num_quantizers=4,
                num_semantic_quantizers=1,
                sliding_window=32,
                upsample_groups=64,
            )
        return MimiModel(MimiConfig(**options)).eval()
    if name == "dac":
        options = dict(encoder_hidden_size=8, decoder_hidden_size=32, n_codebooks=2, codebook_size=64, codebook_dim=4)
        return DacModel(DacConfig(**(options if tiny else {}))).eval()
    if name == "xcodec2":
        import transformers

        if not hasattr(transformers, "Xcodec2Model"):
            raise RuntimeError(f"transformers {transformers.__version__} has no Xcodec2Model")
        options = {}
        if tiny:
            semantic = dict(
                model_type="wav2vec2-bert",
                hidden_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=128,
                output_hidden_size=64,
            )
            options = dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=32,
                encoder_hidden_size=8,
                quantization_dim=128,
                semantic_model_config=semantic,
            )
        return transformers.Xcodec2Model(transformers.Xcodec2Config(**options)).eval()
    raise ValueError(f"unknown peer {name!r}")


def build_contender(
    name: str, config: StableCodecConfig, device: torch.device, tiny: bool, seed: int = 0
) -> Contender:
    """Builds one contender in float32 on `device`, with seeded random weights."""
    torch.manual_seed(seed)
    if name == "stable-codec":
        with torch.device(device):
            model = StableCodecModel(config)
        return StableCodecContender(model.eval().requires_grad_(False))
    if name == "original":
        codec = build_original(original_model_config(config), device, seed)
        return OriginalContender(codec, config.sampling_rate, config.hop_length)
    with torch.device(device):
        model = peer_model(name, tiny)
    contender = {"mimi": MimiContender, "dac": DacContender, "xcodec2": Xcodec2Contender}[name](model)
    contender.model.requires_grad_(False)
    contender.notes.append("default config, random weights" if not tiny else "tiny config, random weights")
    return contender
