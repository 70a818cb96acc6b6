"""The `datasets` recipe of docs/datasets.md on real files: espeak-ng speech stored as WAV and FLAC at 22.05 and
44.1 kHz, decoded and resampled by `datasets`' own `Audio` feature, tokenized with `.map(batched=True)`, saved and
loaded."""

import numpy as np
import pytest
import torch
from datasets import Audio, Dataset, load_from_disk

from transformers_stable_codec import StableCodecFeatureExtractor, StableCodecModel

from .conftest import randomize_, synthesize_speech, tiny_config


BOTTLENECK = "2x15625_700bps"
SENTENCES = [
    ("a.wav", 22050, 1, "The birch canoe slid on the smooth planks."),
    ("b.flac", 44100, 2, "Glue the sheet to the dark blue background."),
    ("c.flac", 22050, 1, "It is easy to tell the depth of a well."),
    ("d.wav", 44100, 1, "These days a chicken leg is a rare dish."),
    ("e.wav", 22050, 1, "Rice is often served in round bowls."),
]


@pytest.fixture(scope="module")
def model() -> StableCodecModel:
    torch.manual_seed(0)
    return randomize_(StableCodecModel(tiny_config()), seed=2).eval()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Dataset:
    folder = tmp_path_factory.mktemp("corpus")
    paths = [str(synthesize_speech(folder / name, text, rate, channels)) for name, rate, channels, text in SENTENCES]
    dataset = Dataset.from_dict({"audio": paths, "text": [text for *_, text in SENTENCES]})
    return dataset.cast_column("audio", Audio(sampling_rate=16000))


def tokenize(batch, model, feature_extractor):
    """The map function of docs/datasets.md."""
    arrays = [audio["array"] for audio in batch["audio"]]
    features = feature_extractor(arrays, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        encoded = model.encode(**features, posthoc_bottleneck=BOTTLENECK)
    frames = encoded.audio_codes_mask.sum(-1).tolist()
    return {
        "audio_codes": [codes[:, :n].numpy() for codes, n in zip(encoded.audio_codes, frames)],
        "num_samples": features["padding_mask"].sum(-1).tolist(),
    }


def test_audio_feature_decodes_and_resamples_every_file(corpus):
    for example, (name, rate, channels, _) in zip(corpus, SENTENCES):
        audio = example["audio"]
        assert audio["sampling_rate"] == 16000
        assert audio.metadata.num_channels == channels and audio.metadata.sample_rate == rate  # the files as stored
        array = np.asarray(audio["array"])  # `datasets` averages the channels of "array"
        assert array.ndim == 1 and np.isfinite(array).all() and np.abs(array).max() > 0.05


def test_batched_map_gives_each_clip_its_own_codes_and_survives_save_and_load(corpus, model, tmp_path):
    feature_extractor = StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length)
    tokenized = corpus.map(
        tokenize,
        batched=True,
        batch_size=2,
        remove_columns=["audio"],
        fn_kwargs=dict(model=model, feature_extractor=feature_extractor),
    )
    assert tokenized.column_names == ["text", "audio_codes", "num_samples"]

    tokenized.save_to_disk(tmp_path / "tokenized")
    reloaded = load_from_disk(tmp_path / "tokenized")
    assert reloaded.features == tokenized.features
    assert reloaded["text"] == corpus["text"]

    for example, audio in zip(reloaded, corpus["audio"]):
        codes = torch.tensor(example["audio_codes"])
        # Read once: a second read of a resampling torchcodec decoder can return one sample less.
        array = audio["array"]
        # Batching and padding change nothing: the same clip encoded alone gives the same codes.
        alone = feature_extractor(array, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            expected = model.encode(**alone, posthoc_bottleneck=BOTTLENECK).audio_codes[0]
        assert codes.dtype == torch.int64 and codes.shape == expected.shape and codes.shape[0] == 2
        torch.testing.assert_close(codes, expected, rtol=0, atol=0)
        assert example["num_samples"] == len(array)
        assert codes.shape[-1] == -(-example["num_samples"] // model.hop_length)
        with torch.no_grad():
            decoded = model.decode(codes[None], posthoc_bottleneck=BOTTLENECK).audio_values
        assert decoded.shape == (1, 1, codes.shape[-1] * model.hop_length)
