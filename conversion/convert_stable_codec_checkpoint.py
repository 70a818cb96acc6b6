"""Converts an original Stable Codec checkpoint (stable-audio-tools layout) to this package's format.

    python conversion/convert_stable_codec_checkpoint.py \
        --config_path model_config.json --checkpoint_path model.ckpt \
        --pytorch_dump_folder_path stable-codec-speech-16k [--push_to_hub REPO_ID] [--dtype float32] [--verify]

Writes `config.json`, `model.safetensors`, `preprocessor_config.json` and a model card (`README.md`). Every original
weight is mapped one-to-one (both weight-norm layouts are accepted); a checkpoint that does not match its config, or
an original option this implementation does not have, stops the conversion with an error naming it.
"""

import argparse
import pathlib
import sys

import torch

from transformers_stable_codec import POSTHOC_BOTTLENECK_PRESETS, OriginalCheckpointError, StableCodecModel


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VARIANTS = {
    "finetuned": "the released model, finetuned with a CTC phoneme head on the pre-bottleneck latents "
    "(`stabilityai/stable-codec-speech-16k`)",
    "base": "the base model before the CTC finetune (`stabilityai/stable-codec-speech-16k-base`)",
}


def model_card(model: StableCodecModel, repo_id: str | None, variant: str, source: str):
    """The Hub model card: license, tags, what the model is, how to use it, its bitrates."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        license="other",
        license_name="stability-ai-community",
        license_link="https://huggingface.co/stabilityai/stable-codec-speech-16k/blob/main/LICENSE.md",
        library_name="transformers",
        pipeline_tag="audio-to-audio",
        tags=["audio", "speech", "neural-audio-codec", "stable-codec", "transformers-stable-codec"],
        base_model="stabilityai/stable-codec-speech-16k-base" if variant == "finetuned" else None,
    )
    name = repo_id or "path/to/this/folder"
    rows = [
        f"| `None` (training FSQ) | {model.tokens_per_step()} | {model.codebook_sizes()[0]:,} | "
        f"{model.bits_per_second():.0f} |"
    ] + [
        f"| `{preset}` | {model.tokens_per_step(preset)} | {model.codebook_sizes(preset)[0]:,} | "
        f"{model.bits_per_second(preset):.0f} |"
        for preset in POSTHOC_BOTTLENECK_PRESETS
    ]
    parameters = sum(parameter.numel() for parameter in model.parameters())
    content = f"""---
{data.to_yaml()}
---

# Stable Codec ({variant})

Stability AI's Stable Codec: the Transformer Audio AutoEncoder of [Scaling Transformers for Low-bitrate
High-Quality Speech Coding](https://arxiv.org/abs/2411.19842), converted from the original checkpoint
(`{source}`) to the [transformers-stable-codec](https://pypi.org/project/transformers-stable-codec/) format.
This is {VARIANTS[variant]}.

{parameters / 1e6:.0f}M parameters, {model.sampling_rate} Hz mono speech, {model.frame_rate:g} latent frames per
second, sliding-window attention {model.config.attention_window}.

## Usage

```python
import torch
import transformers_stable_codec  # registers the model with AutoModel / AutoFeatureExtractor
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained("{name}")
feature_extractor = AutoFeatureExtractor.from_pretrained("{name}")
inputs = feature_extractor(audio_array, sampling_rate=rate, return_tensors="pt")
codes = model.encode(inputs["input_values"], inputs["padding_mask"], posthoc_bottleneck="2x15625_700bps").audio_codes
audio = model.decode(codes, posthoc_bottleneck="2x15625_700bps").audio_values
```

## Bitrates

| `posthoc_bottleneck` | tokens per frame | codebook size | bits/s |
|---|---|---|---|
{chr(10).join(rows)}

## License

The weights are released by Stability AI under the Stability AI Community License; this conversion changes their
format, not their terms.
"""
    return ModelCard(content)


def verify_against_original(model: StableCodecModel, config_path: str, checkpoint_path: str) -> None:
    """Runs the original (if importable here) side by side on a test signal and prints the largest differences."""
    try:
        from original_reference import replace_quantizer, set_attention_mode  # beside this script
        from stable_codec.model import StableCodec  # noqa: F401
    except ImportError as error:
        print(f"--verify: the original stable-codec is not importable here ({error}); skipped the comparison.")
        return
    from stable_codec.model import StableCodec

    original = StableCodec(model_config_path=config_path, ckpt_path=checkpoint_path)
    replace_quantizer(original.model)
    set_attention_mode(original.model, "window")
    generator = torch.Generator().manual_seed(0)
    time = torch.arange(3 * model.sampling_rate) / model.sampling_rate
    audio = 0.3 * torch.sin(2 * torch.pi * 220 * time) + 0.05 * torch.randn(time.shape, generator=generator)
    audio = audio[: audio.shape[-1] // model.hop_length * model.hop_length].view(1, 1, -1)
    with torch.no_grad():
        original_latents, original_codes = original.encode(audio)
        ours = model.float().encode(audio)
        original_audio = original.decode(original_codes)
        our_audio = model.decode(ours.audio_codes).audio_values
    print(f"--verify: largest |latents difference| {float((ours.latents - original_latents).abs().max()):.3e}")
    print(
        f"--verify: identical codes {float((ours.audio_codes == original_codes.transpose(1, 2)).double().mean()):.4%}"
    )
    print(f"--verify: largest |audio difference|   {float((our_audio - original_audio).abs().max()):.3e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", required=True, help="the original model_config.json")
    parser.add_argument("--checkpoint_path", required=True, help="the original model.ckpt or model.safetensors")
    parser.add_argument("--pytorch_dump_folder_path", required=True, help="where to write the converted model")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="also upload the converted model to this Hub repo")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="which release it is (default: from the paths)")
    parser.add_argument("--verify", action="store_true", help="compare with the original, where it is importable")
    args = parser.parse_args(argv)

    for path in (args.config_path, args.checkpoint_path):
        if not pathlib.Path(path).is_file():
            parser.error(f"{path} does not exist")
    try:
        model = StableCodecModel.from_original_checkpoint(args.config_path, args.checkpoint_path, progress=True)
    except OriginalCheckpointError as error:
        sys.exit(f"Cannot convert {args.checkpoint_path}: {error}")
    if args.verify:
        verify_against_original(model, args.config_path, args.checkpoint_path)
    model = model.to(DTYPES[args.dtype])

    from transformers_stable_codec import StableCodecFeatureExtractor

    feature_extractor = StableCodecFeatureExtractor(
        sampling_rate=model.config.sampling_rate, hop_length=model.config.hop_length
    )
    hint = f"{args.checkpoint_path} {args.push_to_hub or ''}"
    variant = args.variant or ("base" if "-base" in hint else "finetuned")
    card = model_card(model, args.push_to_hub, variant, pathlib.Path(args.checkpoint_path).name)

    folder = pathlib.Path(args.pytorch_dump_folder_path)
    model.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    card.save(folder / "README.md")
    print(f"Saved {variant} model ({args.dtype}) to {folder}")
    if args.push_to_hub:
        model.push_to_hub(args.push_to_hub)
        feature_extractor.push_to_hub(args.push_to_hub)
        card.push_to_hub(args.push_to_hub)
        print(f"Pushed to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    main()
