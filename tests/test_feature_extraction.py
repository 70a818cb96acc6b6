"""StableCodecFeatureExtractor: parity of the loudness normalization with the original, layouts, resampling,
padding, saving, and the errors for bad input."""

import json

import numpy as np
import pyloudnorm
import pytest
import soundfile
import torch
from safetensors import safe_open
from transformers import AutoFeatureExtractor

from transformers_stable_codec import StableCodecFeatureExtractor, StableCodecModel, audio_processing

from .conftest import FIXTURES, randomize_, relative_error, tiny_config


LOUDNESS = FIXTURES / "loudness"
RATE = 16000


def loudness(waveform: np.ndarray) -> float:
    return pyloudnorm.Meter(RATE).integrated_loudness(np.asarray(waveform, dtype=np.float64))


def reference_cases() -> dict:
    with safe_open(LOUDNESS / "reference.safetensors", "np") as handle:
        cases = json.loads(handle.metadata()["loudness_fixture"])["cases"]
        for name, case in cases.items():
            case["normalized"] = handle.get_tensor(name)
    return cases


CASES = reference_cases()


def speech_like(seconds: float = 2.0, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope: speech-like loudness statistics without a file."""
    generator = np.random.default_rng(seed)
    time = np.arange(int(seconds * rate)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * time), 0, None) ** 2
    return 0.1 * envelope * generator.standard_normal(len(time))


@pytest.fixture(scope="module")
def extractor() -> StableCodecFeatureExtractor:
    return StableCodecFeatureExtractor()


# Parity with the original's VolumeNorm (fixtures made in the original's environment) ---------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_loudness_matches_the_original(extractor, name):
    case = CASES[name]
    audio, rate = soundfile.read(LOUDNESS / case["input_file"], dtype="float32", always_2d=True)
    assert (rate, audio.shape[1]) == (case["input_rate"], case["input_channels"])
    ours = extractor(audio.T, sampling_rate=rate, return_tensors="np")["input_values"][0, 0]
    reference = case["normalized"]

    # The same resampler, padding, mixdown and meter: the same samples to float32 rounding.
    assert ours.shape == reference.shape
    assert relative_error(torch.from_numpy(ours), torch.from_numpy(reference)) < 1e-5
    if case["silence_skipped"]:
        np.testing.assert_array_equal(ours, reference)
    elif case["declipped"]:
        assert np.abs(ours).max() == pytest.approx(0.95, abs=1e-6) == np.abs(reference).max()
    elif name != "loud_22k_mono":  # pyloudnorm does not clamp the K-weighted signal as the original's meter does
        assert loudness(ours) == pytest.approx(-20.0, abs=0.01)


def test_fixtures_cover_every_branch_of_the_original():
    assert {case["input_rate"] for case in CASES.values()} == {16000, 22050, 44100}
    assert any(case["input_channels"] == 2 for case in CASES.values())
    assert any(case["declipped"] for case in CASES.values())
    assert any(case["silence_skipped"] for case in CASES.values())
    assert any(case["gain_db"] > 20 for case in CASES.values()) and any(case["gain_db"] < 0 for case in CASES.values())


# Normalization properties -----------------------------------------------------------------------------------------


def test_target_is_configurable_and_normalization_switchable():
    clip = speech_like()
    quieter = StableCodecFeatureExtractor(target_loudness=-30.0)(clip, sampling_rate=RATE, return_tensors="np")
    assert loudness(quieter["input_values"][0, 0]) == pytest.approx(-30.0, abs=0.01)
    untouched = StableCodecFeatureExtractor(normalize_loudness=False)(clip, sampling_rate=RATE, return_tensors="np")
    np.testing.assert_array_equal(untouched["input_values"][0, 0, : len(clip)], clip.astype(np.float32))


def test_peak_protection_scales_the_peak_to_095(extractor):
    clip = speech_like()
    clip[1000] = 0.9  # one click: the gain to -20 LUFS pushes it past full scale
    out = extractor(clip, sampling_rate=RATE, return_tensors="np")["input_values"][0, 0]
    np.testing.assert_allclose(out[: len(clip)], clip * (0.95 / 0.9), rtol=1e-6, atol=1e-9)
    assert loudness(out) < -20.0  # the protection wins over the target


def test_silence_and_unmeasurable_clips_keep_their_level(extractor):
    generator = np.random.default_rng(0)
    for clip in (
        1e-4 * generator.standard_normal(RATE),  # mean square 1e-8: silence
        # 2 Hz: loud enough, but K-weighting leaves no block above the -70 LUFS gate (the original returns NaN)
        0.01 * np.sin(2 * np.pi * 2.0 * np.arange(RATE) / RATE),
        0.1 * generator.standard_normal(3000),  # 190 ms: shorter than one 400 ms gating block
    ):
        out = extractor(clip, sampling_rate=RATE, return_tensors="np")["input_values"][0, 0]
        np.testing.assert_array_equal(out[: len(clip)], clip.astype(np.float32))


# Layouts, sample formats, resampling ----------------------------------------------------------------------------


def test_integer_pcm_is_scaled_to_float(extractor):
    plain = StableCodecFeatureExtractor(normalize_loudness=False)
    pcm16 = (speech_like() * 32768).astype(np.int16)
    expected = plain(pcm16.astype(np.float64) / 32768, sampling_rate=RATE, return_tensors="np")["input_values"]
    np.testing.assert_array_equal(plain(pcm16, sampling_rate=RATE, return_tensors="np")["input_values"], expected)
    pcm32 = pcm16.astype(np.int32) << 16
    np.testing.assert_array_equal(plain(pcm32, sampling_rate=RATE, return_tensors="np")["input_values"], expected)
    pcm8 = (pcm16 // 256).astype(np.int8)
    unsigned = (pcm8.astype(np.int16) + 128).astype(np.uint8)
    np.testing.assert_array_equal(
        plain(unsigned, sampling_rate=RATE, return_tensors="np")["input_values"],
        plain(pcm8, sampling_rate=RATE, return_tensors="np")["input_values"],
    )


def test_multichannel_is_averaged_and_containers_agree(extractor):
    left, right = speech_like(seed=1), speech_like(seed=2)
    stereo = extractor(np.stack([left, right]), sampling_rate=RATE, return_tensors="np")["input_values"]
    mono = extractor((left + right) / 2, sampling_rate=RATE, return_tensors="np")["input_values"]
    np.testing.assert_allclose(stereo, mono, atol=1e-7)
    as_list = extractor([left.tolist()], sampling_rate=RATE, return_tensors="np")["input_values"]
    as_tensor = extractor(torch.from_numpy(left), sampling_rate=RATE, return_tensors="np")["input_values"]
    as_array = extractor(left, sampling_rate=RATE, return_tensors="np")["input_values"]
    np.testing.assert_array_equal(as_list, as_array)
    np.testing.assert_array_equal(as_tensor, as_array)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 44101, 44100.0])
def test_resamples_to_16k(rate):
    """44101 Hz has 16000 phases of 44135 taps: built and applied a few phases at a time."""
    plain = StableCodecFeatureExtractor(normalize_loudness=False)
    seconds, frequency = 1.0, 440.0
    tone = 0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)
    out = plain(tone, sampling_rate=rate, return_tensors="np")
    length = int(out["padding_mask"].sum())
    assert abs(length - seconds * RATE) <= 1
    expected = 0.5 * np.sin(2 * np.pi * frequency * np.arange(length) / RATE)
    middle = slice(1000, length - 1000)  # away from the filter's edge transients
    assert np.abs(out["input_values"][0, 0, middle] - expected[middle]).max() < 1e-3


@pytest.mark.parametrize("rate", [44100, 11025, 8000])
def test_tap_gathering_path_equals_the_strided_convolution(rate, monkeypatch):
    """Rates whose whole kernel would be too large gather each output's taps instead; forced here on common rates,
    it must give the convolution's samples (which are torchaudio's, bit for bit) to float32 rounding."""
    clip = torch.from_numpy(speech_like(0.7, rate=rate, seed=5)).float()[None].repeat(2, 1)
    convolved = audio_processing.resample(clip, rate, RATE)
    monkeypatch.setattr(audio_processing, "MAX_KERNEL_ELEMENTS", 0)
    gathered = audio_processing.resample(clip, rate, RATE)
    assert gathered.shape == convolved.shape
    assert relative_error(gathered, convolved) < 1e-6


# Padding, outputs, the model ---------------------------------------------------------------------------------------


def test_batch_is_padded_to_whole_frames_with_a_padding_mask(extractor):
    clips = [speech_like(0.5, seed=1), speech_like(1.3, seed=2)]
    batch = extractor(clips, sampling_rate=RATE, return_tensors="pt")
    assert batch["input_values"].shape == (2, 1, 21120) and batch["input_values"].dtype == torch.float32
    assert batch["padding_mask"].shape == (2, 21120)
    assert batch["padding_mask"].sum(-1).tolist() == [8000, 20800]
    assert not batch["input_values"][0, 0, 8000:].any()
    alone = extractor(clips[0], sampling_rate=RATE, return_tensors="pt")["input_values"]
    assert alone.shape == (1, 1, 8320)
    torch.testing.assert_close(batch["input_values"][:1, :, :8320], alone, rtol=0, atol=0)
    as_numpy = extractor(clips, sampling_rate=RATE, return_tensors="np")
    assert isinstance(as_numpy["input_values"], np.ndarray) and as_numpy["input_values"].dtype == np.float32


def test_features_feed_the_model_and_padding_does_not_change_codes():
    torch.manual_seed(0)
    model = randomize_(StableCodecModel(tiny_config())).eval()
    extractor = StableCodecFeatureExtractor(sampling_rate=model.sampling_rate, hop_length=model.hop_length)
    clips = [speech_like(0.7, seed=3), speech_like(1.5, seed=4)]
    with torch.no_grad():
        batch = model.encode(**extractor(clips, sampling_rate=RATE, return_tensors="pt"))
        for index, clip in enumerate(clips):
            alone = model.encode(**extractor(clip, sampling_rate=RATE, return_tensors="pt")).audio_codes
            frames = alone.shape[-1]
            assert int(batch.audio_codes_mask[index].sum()) == frames
            torch.testing.assert_close(batch.audio_codes[index : index + 1, :, :frames], alone, rtol=0, atol=0)


def test_device_argument_keeps_tensors_there_and_lists_come_back(extractor):
    clips = [speech_like(0.5, seed=1), speech_like(1.3, rate=44100, seed=2)]
    default = extractor(clips, sampling_rate=[RATE, 44100], return_tensors="pt")
    explicit = extractor(
        [torch.from_numpy(clip) for clip in clips], sampling_rate=[RATE, 44100], return_tensors="pt", device="cpu"
    )
    for key in ("input_values", "padding_mask"):
        assert explicit[key].device.type == "cpu"
        torch.testing.assert_close(explicit[key], default[key], rtol=0, atol=0)
    as_lists = extractor(clips, sampling_rate=[RATE, 44100], device=torch.device("cpu"))
    assert isinstance(as_lists["input_values"], list) and len(as_lists["input_values"]) == 2
    np.testing.assert_array_equal(as_lists["input_values"][1], default["input_values"][1].numpy())


def test_save_and_load_through_auto_feature_extractor(tmp_path):
    extractor = StableCodecFeatureExtractor(hop_length=512, target_loudness=-23.0, normalize_loudness=False)
    extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["feature_extractor_type"] == "StableCodecFeatureExtractor"
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(loaded, StableCodecFeatureExtractor)
    assert (loaded.hop_length, loaded.target_loudness, loaded.normalize_loudness) == (512, -23.0, False)


def test_auto_feature_extractor_resolves_from_a_model_folder(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    StableCodecFeatureExtractor(hop_length=640).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                k: v
                for k, v in json.loads((tmp_path / "preprocessor_config.json").read_text()).items()
                if k != "feature_extractor_type"
            }
        )
    )
    assert isinstance(AutoFeatureExtractor.from_pretrained(tmp_path), StableCodecFeatureExtractor)


# Bad input --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audio, rate, message",
    [
        (np.zeros(0), RATE, "clip 0 is empty"),
        ([np.zeros(100), np.zeros((2, 0))], RATE, "clip 1 is empty"),
        ([], RATE, "empty list"),
        (np.array([0.1, np.nan, 0.2]), RATE, "NaN or infinite"),
        ([np.zeros(10), np.array([0.0, np.inf])], RATE, "NaN or infinite"),
        (np.zeros((2, 1, 100)), RATE, "3-D array"),
        (np.zeros((1000, 2)), RATE, "transpose"),
        (np.arange(100), RATE, "dtype int64"),
        (np.zeros(100, dtype=np.complex64), RATE, "dtype complex64"),
        (np.zeros(100), 0, "positive number"),
        (np.zeros(100), -16000, "positive number"),
        (np.zeros(100), float("nan"), "positive number"),
        (np.zeros(100), float("inf"), "positive number"),
        (np.zeros(100), "16000", "positive number"),
        (np.zeros(100), True, "positive number"),
        (np.zeros(100), 999, "outside the supported range of 1000 to 384000 Hz"),
        (np.zeros(100), 1, "outside the supported range"),
        (np.zeros(100), 384001, "outside the supported range"),
        (np.zeros(100), 1e9, "outside the supported range"),
        (np.zeros(100), 44100.5, "not a whole number"),
        ([np.zeros(100), np.zeros(100)], [16000], "1 sampling rates given for 2 clips"),
        ([np.zeros(100), np.zeros(100)], [16000, 0], "positive number"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_problem(extractor, audio, rate, message):
    with pytest.raises(ValueError, match=message):
        extractor(audio, sampling_rate=rate)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(feature_size=2), "mono"),
        (dict(hop_length=0), "hop_length"),
        (dict(sampling_rate=16000.5), "sampling_rate"),
        (dict(target_loudness=float("nan")), "target_loudness"),
        (dict(padding_side="left"), "padding_side"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StableCodecFeatureExtractor(**kwargs)
