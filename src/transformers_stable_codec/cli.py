"""`stable-codec`: tokenize speech files, decode tokens, and measure the codec from the shell.

    stable-codec encode speech.wav more/ --output-dir codes/         # audio files -> <name>.codes.safetensors
    stable-codec decode codes/ --output-dir decoded/                 # codes files -> <name>.wav (16 kHz)
    stable-codec reconstruct speech.wav --output-dir out/            # encode + decode; prints bitrate and metrics
    stable-codec evaluate corpus/ --csv metrics.csv --json metrics.json

Audio inputs are files or folders (searched recursively for .wav, .flac, .ogg, .mp3, .aiff, .au), at any sampling rate
and channel count: the feature extractor resamples, mixes down and normalizes loudness as the original does. A codes
file is a safetensors file holding `audio_codes` (int64, tokens per frame x frames) and, as metadata, the format, the
model, the bottleneck, the sampling rate, the hop length and the number of samples; see docs/cli.md.
"""

import argparse
import contextlib
import csv
import json
import math
import pathlib
import sys

import numpy as np
import soundfile
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .configuration_stable_codec import POSTHOC_BOTTLENECK_PRESETS
from .feature_extraction_stable_codec import StableCodecFeatureExtractor
from .metrics import METRIC_NAMES
from .modeling_stable_codec import StableCodecModel


CODES_FORMAT = "stable-codec-codes/1"
CODES_SUFFIX = ".codes.safetensors"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")
BOTTLENECKS = (*POSTHOC_BOTTLENECK_PRESETS, "none")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")

# A small model trained here on synthetic espeak-ng speech (its model card gives its metrics): it shows the whole
# pipeline working, but it has never heard a human voice. Real use passes --model.
DEFAULT_MODEL = pathlib.Path(__file__).resolve().parent / "demo_model"


class CliError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


# Loading -----------------------------------------------------------------------------------------------------------


def load_codec(location: str, device: str, dtype: torch.dtype, attn_implementation: str):
    """The model and its feature extractor, from a `save_pretrained` folder or Hub id, or an original-layout folder
    (`model_config.json` + `model.safetensors` or `model.ckpt`)."""
    try:
        model = StableCodecModel.from_pretrained(location, dtype=dtype, attn_implementation=attn_implementation)
        model = model.to(device).eval()
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        raise CliError(f"cannot load the model {location!r}: {error}") from None
    try:
        extractor = StableCodecFeatureExtractor.from_pretrained(location)
    except OSError:  # no preprocessor_config.json: the defaults, sized to the model
        extractor = StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length)
    if (extractor.sampling_rate, extractor.hop_length) != (model.sampling_rate, model.hop_length):
        raise CliError(
            f"{location}: the feature extractor ({extractor.sampling_rate} Hz, hop {extractor.hop_length}) does not fit "
            f"the model ({model.sampling_rate} Hz, hop {model.hop_length})."
        )
    return model, extractor


def default_model() -> str:
    if not DEFAULT_MODEL.is_dir():
        raise CliError("no default model in this installation: pass --model (a Hub id or a local folder).")
    return str(DEFAULT_MODEL)


# Files --------------------------------------------------------------------------------------------------------------


def collect(paths: list[str], suffixes: tuple[str, ...], kind: str) -> list[pathlib.Path]:
    """Files named on the command line, and the matching files under folders named there, in a stable order."""
    found = []
    for name in paths:
        path = pathlib.Path(name)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
            if not matches:
                raise CliError(f"{path}: the folder holds no {kind} ({', '.join(suffixes)}).")
            found.extend(matches)
        elif path.is_file():
            found.append(path)
        else:
            raise CliError(f"{path}: no such file or folder.")
    return found


def output_paths(inputs: list[pathlib.Path], output_dir: pathlib.Path, strip: str, suffix: str) -> list[pathlib.Path]:
    outputs = [
        output_dir / (path.name[: -len(strip)] if strip and path.name.endswith(strip) else path.stem)
        for path in inputs
    ]
    outputs = [path.with_name(path.name + suffix) for path in outputs]
    seen = {}
    for source, target in zip(inputs, outputs):
        if target in seen:
            raise CliError(f"{seen[target]} and {source} would both be written to {target}: rename one.")
        seen[target] = source
    output_dir.mkdir(parents=True, exist_ok=True)
    return outputs


def read_audio(path: pathlib.Path) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 and the sampling rate."""
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError) as error:  # soundfile's LibsndfileError is a RuntimeError
        raise CliError(f"{path}: cannot read it as audio ({error}).") from None
    if audio.shape[0] == 0:
        raise CliError(f"{path}: the file holds no samples.")
    return audio.T, rate


def write_codes(path: pathlib.Path, codes: torch.Tensor, metadata: dict) -> None:
    save_file(
        {"audio_codes": codes.to(torch.int64).cpu().contiguous()},
        path,
        metadata={k: str(v) for k, v in metadata.items()},
    )


def read_codes(path: pathlib.Path) -> tuple[torch.Tensor, dict]:
    try:
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CODES_FORMAT:
                raise CliError(
                    f"{path}: not a Stable Codec codes file (format {metadata.get('format')!r}, expected {CODES_FORMAT!r})."
                )
            if "audio_codes" not in handle.keys():
                raise CliError(f"{path}: the codes file has no 'audio_codes' tensor.")
            codes = handle.get_tensor("audio_codes")
    except (SafetensorError, OSError) as error:
        raise CliError(f"{path}: cannot read it as a codes file ({error}).") from None
    missing = {"model", "bottleneck", "sampling_rate", "hop_length", "num_samples"} - set(metadata)
    if missing:
        raise CliError(f"{path}: the codes file lacks {', '.join(sorted(missing))} in its metadata.")
    if codes.dim() != 2:
        raise CliError(f"{path}: audio_codes must be (tokens per frame, frames), got shape {tuple(codes.shape)}.")
    return codes, metadata


def bottleneck_argument(name: str) -> str | None:
    return None if name == "none" else name


# Encoding and decoding ----------------------------------------------------------------------------------------------


class Codec:
    """A loaded model and feature extractor, with the device and dtype options of the command."""

    def __init__(self, location: str, args: argparse.Namespace):
        self.location = location
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.extractor = load_codec(location, self.device, DTYPES[args.dtype], args.attn_implementation)
        self.chunk_length_s = args.chunk_length_s

    @torch.inference_mode()
    def encode(self, path: pathlib.Path, bottleneck: str | None):
        """Codes (tokens per frame, frames), the model input (normalized mono at the model's rate) and its length."""
        audio, rate = read_audio(path)
        try:
            features = self.extractor(audio, sampling_rate=rate, return_tensors="pt")
            encoded = self.model.encode(
                features["input_values"].to(self.device, self.model.dtype),
                padding_mask=features["padding_mask"].to(self.device),
                posthoc_bottleneck=bottleneck,
                chunk_length_s=self.chunk_length_s,
            )
        except ValueError as error:
            raise CliError(f"{path}: {error}") from None
        num_samples = int(features["padding_mask"].sum())
        return encoded.audio_codes[0], features["input_values"][0, 0, :num_samples].numpy(), rate

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, bottleneck: str | None, num_samples: int) -> np.ndarray:
        audio = self.model.decode(
            codes[None].to(self.device), posthoc_bottleneck=bottleneck, chunk_length_s=self.chunk_length_s
        ).audio_values
        return audio[0, 0, :num_samples].float().cpu().numpy()

    def bitrate(self, bottleneck: str | None) -> float:
        return self.model.bits_per_second(bottleneck)


def write_audio(path: pathlib.Path, audio: np.ndarray, rate: int) -> None:
    # 32-bit float keeps the decoder's output as it is: 16-bit PCM would clip it silently above full scale.
    soundfile.write(path, audio, rate, subtype="FLOAT")


def progress(items, description: str):
    return tqdm(items, desc=description, unit="file", file=sys.stderr)


def command_encode(args) -> None:
    inputs = collect(args.inputs, AUDIO_SUFFIXES, "audio files")
    outputs = output_paths(inputs, pathlib.Path(args.output_dir), "", CODES_SUFFIX)
    codec, bottleneck = Codec(args.model or default_model(), args), bottleneck_argument(args.bottleneck)
    for source, target in zip(progress(inputs, "encode"), outputs):
        codes, model_input, source_rate = codec.encode(source, bottleneck)
        write_codes(
            target,
            codes,
            {
                "format": CODES_FORMAT,
                "model": codec.location,
                "bottleneck": args.bottleneck,
                "sampling_rate": codec.model.sampling_rate,
                "hop_length": codec.model.hop_length,
                "num_samples": len(model_input),
                "source": source.name,
                "source_sampling_rate": source_rate,
            },
        )
        tqdm.write(f"{source} -> {target}  {tuple(codes.shape)} tokens, {codec.bitrate(bottleneck):.1f} bits/s")


def command_decode(args) -> None:
    inputs = collect(args.inputs, (CODES_SUFFIX,), "codes files")
    to_stdout = args.stream and args.output_dir == "-"
    if to_stdout:
        outputs = [None] * len(inputs)
    else:
        outputs = output_paths(inputs, pathlib.Path(args.output_dir), CODES_SUFFIX, ".wav")
    files = [(source, target, *read_codes(source)) for source, target in zip(inputs, outputs)]
    codecs = {}
    for source, target, codes, metadata in progress(files, "decode"):
        location = args.model or metadata["model"]
        if location not in codecs:
            codecs[location] = Codec(location, args)
        codec = codecs[location]
        if args.model and args.model != metadata["model"]:
            tqdm.write(f"warning: {source} was encoded with {metadata['model']!r}; decoding with {args.model!r}.")
        model = codec.model
        if (int(metadata["sampling_rate"]), int(metadata["hop_length"])) != (model.sampling_rate, model.hop_length):
            raise CliError(
                f"{source}: the codes are for {metadata['sampling_rate']} Hz with hop {metadata['hop_length']}, the "
                f"model {location!r} works at {model.sampling_rate} Hz with hop {model.hop_length}."
            )
        if metadata["bottleneck"] not in BOTTLENECKS:
            raise CliError(
                f"{source}: unknown bottleneck {metadata['bottleneck']!r} (known: {', '.join(BOTTLENECKS)})."
            )
        num_samples = int(metadata["num_samples"])
        frames = -(-num_samples // model.hop_length)
        if codes.shape[-1] != frames:
            raise CliError(
                f"{source}: {codes.shape[-1]} frames of codes for {num_samples} samples (expected {frames})."
            )
        if args.stream:
            stream_audio(codec, codes, bottleneck_argument(metadata["bottleneck"]), num_samples, source, target, args)
            continue
        try:
            audio = codec.decode(codes, bottleneck_argument(metadata["bottleneck"]), num_samples)
        except ValueError as error:
            raise CliError(f"{source}: the codes do not fit the model {location!r}: {error}") from None
        write_audio(target, audio, model.sampling_rate)
        tqdm.write(f"{source} -> {target}  {num_samples / model.sampling_rate:.2f} s")


@torch.inference_mode()
def stream_audio(codec, codes, bottleneck, num_samples: int, source: pathlib.Path, target, args) -> None:
    """`decode --stream`: the codes handed to `decode_stream` frame by frame, as a speech LM emits them, and each
    chunk of audio written as it comes: raw PCM s16le to stdout for no `target`, else into a WAV file that grows
    (libsndfile rewrites its header with the final length at close)."""
    model = codec.model
    chunks = codes[None].to(codec.device).split(1, dim=-1)
    stream = model.decode_stream(chunks, bottleneck, lookahead_frames=args.lookahead_frames)
    written = 0
    with contextlib.ExitStack() as stack:
        if target is not None:
            sink = stack.enter_context(soundfile.SoundFile(target, "w", model.sampling_rate, 1, subtype="FLOAT"))
        try:
            for audio in stream:
                audio = audio[0, 0, : num_samples - written].float().cpu().numpy()
                written += len(audio)
                if target is None:
                    pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
                    sys.stdout.buffer.write(pcm.tobytes())
                    sys.stdout.buffer.flush()
                else:
                    sink.write(audio)
                    sink.flush()
        except ValueError as error:
            raise CliError(f"{source}: the codes do not fit the model {codec.location!r}: {error}") from None
    seconds = num_samples / model.sampling_rate
    tqdm.write(f"{source} -> {target or 'stdout (s16le)'}  {seconds:.2f} s, streamed", file=sys.stderr)


def require_metrics() -> None:
    try:
        import pesq  # noqa: F401
        import pystoi  # noqa: F401
        import torchmetrics  # noqa: F401
    except ImportError as error:
        raise CliError(f"the metrics need {error.name}: pip install 'transformers-stable-codec[metrics]'.") from None


def score(reference: np.ndarray, reconstruction: np.ndarray, rate: int, source: pathlib.Path) -> dict[str, float]:
    """The table's metrics; one that cannot score this file (too short, no speech) is NaN, with a warning."""
    from .metrics.functional import SCORERS

    scores = {}
    for name, scorer in SCORERS.items():
        try:
            scores[name] = scorer(reconstruction, reference, rate)
        except ValueError as error:
            tqdm.write(f"warning: {source}: no {name}: {error}")
            scores[name] = math.nan
    return scores


def reconstruct(codec: Codec, source: pathlib.Path, bottleneck: str | None) -> tuple[dict, np.ndarray]:
    """Encodes and decodes one file; the metrics compare the decoded audio with the model input (the file resampled,
    mixed down and loudness-normalized), which is what the codec is asked to reproduce."""
    codes, model_input, _ = codec.encode(source, bottleneck)
    decoded = codec.decode(codes, bottleneck, len(model_input))
    rate = codec.model.sampling_rate
    row = {"file": str(source), "seconds": len(model_input) / rate, "bits_per_second": codec.bitrate(bottleneck)}
    row.update(score(model_input, decoded, rate, source))
    return row, decoded


def format_scores(row: dict) -> str:
    return "  ".join(f"{name} {row[name]:.3f}" for name in METRIC_NAMES)


def command_reconstruct(args) -> None:
    require_metrics()
    inputs = collect(args.inputs, AUDIO_SUFFIXES, "audio files")
    outputs = output_paths(inputs, pathlib.Path(args.output_dir), "", ".wav")
    codec, bottleneck = Codec(args.model or default_model(), args), bottleneck_argument(args.bottleneck)
    for source, target in zip(progress(inputs, "reconstruct"), outputs):
        row, decoded = reconstruct(codec, source, bottleneck)
        write_audio(target, decoded, codec.model.sampling_rate)
        tqdm.write(
            f"{source} -> {target}  {row['seconds']:.2f} s, {args.bottleneck} at {row['bits_per_second']:.1f} bits/s\n"
            f"  {format_scores(row)}"
        )


def command_evaluate(args) -> None:
    require_metrics()
    inputs = collect(args.inputs, AUDIO_SUFFIXES, "audio files")
    codec, bottleneck = Codec(args.model or default_model(), args), bottleneck_argument(args.bottleneck)
    rows = [reconstruct(codec, source, bottleneck)[0] for source in progress(inputs, "evaluate")]
    mean = {name: float(np.nanmean([row[name] for row in rows])) for name in METRIC_NAMES}
    width = max(len(row["file"]) for row in rows + [{"file": "mean"}])
    print(f"{'file':<{width}}  {'seconds':>8}  " + "  ".join(f"{name:>13}" for name in METRIC_NAMES))
    for row in rows + [{"file": "mean", "seconds": float(np.mean([row["seconds"] for row in rows])), **mean}]:
        print(
            f"{row['file']:<{width}}  {row['seconds']:>8.2f}  " + "  ".join(f"{row[n]:>13.4f}" for n in METRIC_NAMES)
        )
    print(f"model {codec.location}, bottleneck {args.bottleneck}: {codec.bitrate(bottleneck):.1f} bits/s")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file", "seconds", "bits_per_second", *METRIC_NAMES])
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        summary = {
            "model": codec.location,
            "bottleneck": args.bottleneck,
            "bits_per_second": codec.bitrate(bottleneck),
            "files": rows,
            "mean": mean,
        }
        # NaN (a metric that could not score a file) is written as null, which JSON has.
        pathlib.Path(args.json).write_text(json.dumps(_nan_to_none(summary), indent=2) + "\n")


def _nan_to_none(value):
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


# Arguments ------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stable-codec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name, run, help, inputs, model_default, output=None, bottleneck=True):
        command = commands.add_parser(name, help=help, description=help)
        command.add_argument("inputs", nargs="+", help=inputs)
        command.add_argument(
            "--model",
            help="Hub id or local folder: a save_pretrained folder, or an original-layout folder (model_config.json + "
            f"model.safetensors). Default: {model_default}",
        )
        if bottleneck:
            command.add_argument(
                "--bottleneck",
                choices=BOTTLENECKS,
                default="2x15625_700bps",
                help="post-hoc residual FSQ preset, or 'none' for the training-time FSQ (default: %(default)s)",
            )
        command.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
        command.add_argument("--dtype", choices=list(DTYPES), default="float32")
        command.add_argument("--attn-implementation", choices=ATTENTION, default="sdpa")
        command.add_argument(
            "--chunk-length-s",
            type=float,
            help="code long files in chunks of this many seconds, each with the model's receptive field as context: "
            "the same output in memory bounded by the chunk (default: whole files)",
        )
        if output:
            command.add_argument("-o", "--output-dir", required=True, help=f"folder for the {output} files")
        command.set_defaults(run=run)
        return command

    test_model = "the demo model shipped with the package, trained on synthetic espeak-ng speech (not for real use)."
    add_command(
        "encode",
        command_encode,
        "audio files -> codes files",
        "audio files or folders",
        test_model,
        output="<name>.codes.safetensors",
    )
    decode = add_command(
        "decode",
        command_decode,
        "codes files -> 16 kHz WAV files",
        "codes files or folders",
        "the model recorded in each codes file.",
        output="decoded <name>.wav",
        bottleneck=False,
    )
    decode.add_argument(
        "--stream",
        action="store_true",
        help="decode frame by frame (model.decode_stream) and write the audio as it comes; with -o - as raw 16-bit "
        "PCM (s16le, mono, model rate) to stdout",
    )
    decode.add_argument(
        "--lookahead-frames",
        type=int,
        help="with --stream: future frames the decoder sees (default: its receptive field, the exact audio)",
    )
    add_command(
        "reconstruct",
        command_reconstruct,
        "encode and decode audio files; print the bitrate and the metrics",
        "audio files or folders",
        test_model,
        output="decoded <name>.wav",
    )
    evaluate = add_command(
        "evaluate",
        command_evaluate,
        "a table of the metrics over many audio files",
        "audio files or folders",
        test_model,
    )
    evaluate.add_argument("--csv", help="write one row per file to this CSV file")
    evaluate.add_argument("--json", help="write the rows, the means and the settings to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CliError as error:
        print(f"stable-codec: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
