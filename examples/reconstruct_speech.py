"""The main job: tokenize a speech file with Stable Codec and decode it back.

    python examples/reconstruct_speech.py [speech.wav] [--model PATH] [--bottleneck 2x15625_700bps] [--output out.wav]

Without a speech file it synthesizes one with espeak-ng. `--model` takes a folder saved with `save_pretrained` (or a
Hub id) or a folder in the original layout (`model_config.json` + `model.safetensors`). Until a trained checkpoint
ships with the package, the default is the small random-weight model of the parity fixtures: the pipeline runs for
real, but the reconstruction is not speech.
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile

import soundfile
import torch

from transformers_stable_codec import StableCodecModel
from transformers_stable_codec.original_checkpoint import model_from_original


DEFAULT_MODEL = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "parity" / "small_a"


def load_model(location: str) -> StableCodecModel:
    folder = pathlib.Path(location)
    if (folder / "model_config.json").is_file():
        return model_from_original(folder / "model_config.json", folder / "model.safetensors")
    return StableCodecModel.from_pretrained(location).eval()


def synthesize_speech(path: pathlib.Path) -> None:
    text = "Stable Codec turns speech into a few hundred bits per second and back."
    try:
        speech = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
        # espeak-ng speaks at 22.05 kHz; sox resamples to the model's rate.
        subprocess.run(["sox", "-t", "wav", "-", "-r", "16000", str(path)], input=speech, check=True, capture_output=True)
    except FileNotFoundError:
        sys.exit("No input file given and espeak-ng or sox is not installed: pass a 16 kHz mono WAV file.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="speech file (mono); synthesized with espeak-ng if omitted")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--bottleneck", default="2x15625_700bps", help="post-hoc preset, or 'none' for the training FSQ")
    parser.add_argument("--output", default="reconstructed.wav")
    args = parser.parse_args()

    model = load_model(args.model)
    bottleneck = None if args.bottleneck == "none" else args.bottleneck
    with tempfile.TemporaryDirectory() as scratch:
        path = pathlib.Path(args.input) if args.input else pathlib.Path(scratch) / "speech.wav"
        if not args.input:
            synthesize_speech(path)
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if audio.shape[1] != 1 or rate != model.sampling_rate:
        sys.exit(f"{path}: need mono audio at {model.sampling_rate} Hz, got {audio.shape[1]} channel(s) at {rate} Hz.")

    input_values = torch.from_numpy(audio.T).unsqueeze(0)  # (1, 1, samples)
    with torch.no_grad():
        encoded = model.encode(input_values, posthoc_bottleneck=bottleneck)
        decoded = model.decode(encoded.audio_codes, posthoc_bottleneck=bottleneck).audio_values
    decoded = decoded[0, 0, : input_values.shape[-1]].numpy()
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(output, decoded, model.sampling_rate)

    seconds = input_values.shape[-1] / model.sampling_rate
    print(f"input        {path.name if args.input else 'espeak-ng speech'}: {seconds:.2f} s at {rate} Hz")
    print(f"tokens       {tuple(encoded.audio_codes.shape)} (batch, tokens per step, frames) at {model.frame_rate:g} Hz")
    print(f"bottleneck   {args.bottleneck}: {model.bits_per_second(bottleneck):.1f} bits/s, codebooks {model.codebook_sizes(bottleneck)}")
    print(f"output       {output} ({decoded.shape[-1]} samples)")


if __name__ == "__main__":
    main()
