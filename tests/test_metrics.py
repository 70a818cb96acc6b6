"""The paper's metrics as `evaluate` modules: loadable from the package, their known properties on real speech, and
equality with the reference packages."""

import pathlib

import evaluate
import numpy as np
import pesq
import pystoi
import pytest
import soundfile

from transformers_stable_codec.metrics import METRIC_NAMES, functional, metric_path, metric_paths

from .conftest import synthesize_speech


RATE = 16000
# Metrics that need the sampling rate (PESQ takes it to check that it is 16 kHz).
RATE_ARGUMENT = {"mel_distance", "wideband_pesq", "stoi"}
HIGHER_IS_BETTER = {"si_sdr": True, "mel_distance": False, "stft_distance": False, "wideband_pesq": True, "stoi": True}


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    path = synthesize_speech(
        tmp_path_factory.mktemp("speech") / "speech.wav", "The birch canoe slid on the smooth planks, glue the sheet."
    )
    audio, rate = soundfile.read(path, dtype="float32")
    assert rate == RATE
    return audio


def with_noise(clean: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(clean))
    noise *= np.sqrt(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (clean + noise).astype(np.float32)


@pytest.fixture(scope="module")
def modules() -> dict:
    return {name: evaluate.load(path) for name, path in metric_paths().items()}


def compute(modules, name, predictions, references) -> float:
    kwargs = {"sampling_rate": RATE} if name in RATE_ARGUMENT else {}
    return modules[name].compute(predictions=predictions, references=references, **kwargs)[name]


def test_every_metric_is_an_evaluate_module_shipped_in_the_package(modules):
    assert set(modules) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        folder = pathlib.Path(metric_path(name))
        assert (folder / f"{name}.py").is_file()
        assert isinstance(modules[name], evaluate.Metric)
        assert modules[name].description and modules[name].citation
    with pytest.raises(ValueError, match="Unknown metric 'visqol'"):
        metric_path("visqol")


def test_identical_signals_score_best(modules, speech):
    scores = {name: compute(modules, name, [speech], [speech]) for name in METRIC_NAMES}
    assert scores["si_sdr"] > 100
    assert scores["mel_distance"] == 0.0 and scores["stft_distance"] == 0.0
    assert scores["wideband_pesq"] == pytest.approx(4.64, abs=0.01)  # the top of the P.862.2 MOS-LQO scale
    assert scores["stoi"] == pytest.approx(1.0, abs=1e-6)


def test_more_noise_scores_worse(modules, speech):
    levels = [30.0, 15.0, 0.0]  # SNR in dB
    for name in METRIC_NAMES:
        scores = [compute(modules, name, [with_noise(speech, snr)], [speech]) for snr in levels]
        ordered = sorted(scores, reverse=HIGHER_IS_BETTER[name])
        assert scores == ordered and len(set(scores)) == 3, (name, scores)


def test_si_sdr_of_white_noise_is_the_snr_and_ignores_gain(modules, speech):
    for snr in (0.0, 10.0, 20.0):
        noisy = with_noise(speech, snr, seed=int(snr))
        assert compute(modules, "si_sdr", [noisy], [speech]) == pytest.approx(snr, abs=0.2)
        assert compute(modules, "si_sdr", [3 * noisy], [speech]) == pytest.approx(
            compute(modules, "si_sdr", [noisy], [speech]), abs=1e-6
        )


def test_si_sdr_matches_the_closed_form(speech):
    noisy = with_noise(speech, 5.0).astype(np.float64)
    reference = speech.astype(np.float64) - speech.mean()
    estimate = noisy - noisy.mean()
    target = (estimate @ reference) / (reference @ reference) * reference
    expected = 10 * np.log10((target @ target) / ((estimate - target) @ (estimate - target)))
    assert functional.si_sdr(noisy, speech) == pytest.approx(expected, abs=1e-9)


def test_spectral_distances_see_gain_that_si_sdr_ignores(speech):
    # A gain g moves the log10 power of every unclamped bin by |log10(g^2)|: the distances grow with the gain change.
    for distance in (functional.stft_distance, lambda x, y: functional.mel_distance(x, y, RATE)):
        halved, quartered = distance(speech / 2, speech), distance(speech / 4, speech)
        assert 0.5 < halved < quartered
    assert functional.si_sdr(speech / 4, speech) > 100


def test_pesq_and_stoi_equal_the_packages_own_values(modules, speech):
    degraded = [with_noise(speech, 10.0, seed=1), with_noise(speech, 20.0, seed=2)]
    references = [speech, speech]
    own_pesq = [pesq.pesq(RATE, r, d, "wb") for r, d in zip(references, degraded)]
    own_stoi = [pystoi.stoi(r, d, RATE, extended=False) for r, d in zip(references, degraded)]
    assert compute(modules, "wideband_pesq", degraded, references) == pytest.approx(np.mean(own_pesq), abs=1e-9)
    assert compute(modules, "stoi", degraded, references) == pytest.approx(np.mean(own_stoi), abs=1e-9)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: functional.si_sdr(s[:-1], s), "crop them to the same length"),
        (lambda s: functional.stoi(np.where(np.arange(len(s)) == 5, np.nan, s), s, RATE), "NaN or infinite"),
        (lambda s: functional.stft_distance(s[None], s[None]), "1-D waveform"),
        (lambda s: functional.mel_distance(s[:500], s[:500], RATE), "more than 1024 samples"),
        (lambda s: functional.mel_distance(s, s, 0), "positive integer"),
        (lambda s: functional.wideband_pesq(s, s, 8000), "defined at 16000 Hz"),
        (lambda s: functional.wideband_pesq(np.zeros_like(s), np.zeros_like(s)), "PESQ cannot score"),
        (lambda s: functional.si_sdr(np.zeros(0), np.zeros(0)), "empty"),
    ],
)
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # pesq divides silence by its peak
def test_bad_input_raises_a_value_error(speech, call, message):
    with pytest.raises(ValueError, match=message):
        call(speech)


def test_an_empty_batch_or_a_missing_rate_raises(modules, speech):
    with pytest.raises(ValueError, match="No predictions"):
        modules["si_sdr"].compute(predictions=[], references=[])
    for name in ("mel_distance", "stoi"):
        with pytest.raises(ValueError, match="`sampling_rate` must be a positive integer of Hz, got None"):
            modules[name].compute(predictions=[speech], references=[speech])
