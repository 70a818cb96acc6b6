"""The objective metrics of the paper's table, for one reconstructed waveform against its reference.

SI-SDR comes from torchmetrics, wideband PESQ from `pesq` (ITU-T P.862.2), STOI from `pystoi`; the mel and STFT
distances follow the multi-scale definitions of DAC's evaluation (the codec papers' "mel distance" and "STFT
distance"), on torch's STFT and transformers' Slaney mel filters. Every function takes two 1-D arrays of equal
length and returns a float; bad input raises a `ValueError` naming the problem.
"""

import numbers

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank


# DAC's evaluation: two STFT scales with a quarter-window hop; mel bands per scale; magnitudes clamped at 1e-5 before
# the log of the power; the distance adds the L1 of log10 power and the L1 of magnitudes.
WINDOW_LENGTHS = (2048, 512)
MEL_BANDS = (150, 80)
CLAMP = 1e-5

PESQ_SAMPLING_RATE = 16000  # wideband PESQ (P.862.2) is defined at 16 kHz only


def slaney_mel_filters(window_length: int, bands: int, sampling_rate: float) -> torch.Tensor:
    """(bands, window_length // 2 + 1) Slaney mel filters from 0 Hz to Nyquist, as float64 (transformers' filters)."""
    filters = mel_filter_bank(
        num_frequency_bins=window_length // 2 + 1,
        num_mel_filters=bands,
        min_frequency=0.0,
        max_frequency=sampling_rate / 2,
        sampling_rate=sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters).T


def _check_pair(prediction, reference) -> tuple[np.ndarray, np.ndarray]:
    prediction, reference = np.asarray(prediction, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    for name, signal in (("prediction", prediction), ("reference", reference)):
        if signal.ndim != 1:
            raise ValueError(f"the {name} must be a 1-D waveform, got shape {signal.shape}.")
        if signal.size == 0:
            raise ValueError(f"the {name} is empty.")
        if not np.isfinite(signal).all():
            raise ValueError(f"the {name} contains NaN or infinite samples.")
    if prediction.shape != reference.shape:
        raise ValueError(
            f"the prediction has {prediction.size} samples and the reference {reference.size}: crop them to the same "
            "length (StableCodecModel.decode returns whole frames)."
        )
    return prediction, reference


def _check_rate(sampling_rate) -> int:
    if not isinstance(sampling_rate, numbers.Integral) or isinstance(sampling_rate, bool) or sampling_rate <= 0:
        raise ValueError(f"`sampling_rate` must be a positive integer of Hz, got {sampling_rate!r}.")
    return int(sampling_rate)


def si_sdr(prediction, reference) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (zero-mean signals, Le Roux et al. 2019). Higher is better."""
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

    prediction, reference = _check_pair(prediction, reference)
    return float(
        scale_invariant_signal_distortion_ratio(
            torch.from_numpy(prediction), torch.from_numpy(reference), zero_mean=True
        )
    )


def _magnitudes(signal: np.ndarray, window_length: int) -> torch.Tensor:
    window = torch.hann_window(window_length, dtype=torch.float64)
    spectrum = torch.stft(
        torch.from_numpy(signal),
        n_fft=window_length,
        hop_length=window_length // 4,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spectrum.abs()  # (frequencies, frames)


def _spectral_distance(prediction: torch.Tensor, reference: torch.Tensor) -> float:
    def log_power(magnitude):
        return magnitude.clamp(min=CLAMP).pow(2).log10()

    log_distance = (log_power(prediction) - log_power(reference)).abs().mean()
    return float(log_distance + (prediction - reference).abs().mean())


def _check_stft_length(length: int):
    # torch's reflect padding needs more samples than half the longest window.
    if length <= max(WINDOW_LENGTHS) // 2:
        raise ValueError(f"the signals need more than {max(WINDOW_LENGTHS) // 2} samples for the STFT, got {length}.")


def stft_distance(prediction, reference) -> float:
    """Multi-scale STFT distance (windows of 2048 and 512 samples). 0 for identical signals; lower is better."""
    prediction, reference = _check_pair(prediction, reference)
    _check_stft_length(prediction.size)
    return sum(
        _spectral_distance(_magnitudes(prediction, length), _magnitudes(reference, length))
        for length in WINDOW_LENGTHS
    )


def mel_distance(prediction, reference, sampling_rate: int) -> float:
    """Multi-scale mel distance (150 and 80 Slaney mel bands over windows of 2048 and 512 samples). 0 for identical
    signals; lower is better."""
    prediction, reference = _check_pair(prediction, reference)
    sampling_rate = _check_rate(sampling_rate)
    _check_stft_length(prediction.size)
    total = 0.0
    for length, bands in zip(WINDOW_LENGTHS, MEL_BANDS):
        filters = slaney_mel_filters(length, bands, sampling_rate)
        total += _spectral_distance(
            filters @ _magnitudes(prediction, length), filters @ _magnitudes(reference, length)
        )
    return total


def wideband_pesq(prediction, reference, sampling_rate: int = PESQ_SAMPLING_RATE) -> float:
    """Wideband PESQ (ITU-T P.862.2) MOS-LQO from the `pesq` package, 1.04 to 4.64; higher is better."""
    import pesq

    prediction, reference = _check_pair(prediction, reference)
    if _check_rate(sampling_rate) != PESQ_SAMPLING_RATE:
        raise ValueError(f"wideband PESQ is defined at {PESQ_SAMPLING_RATE} Hz; got audio at {sampling_rate} Hz.")
    try:
        return float(pesq.pesq(PESQ_SAMPLING_RATE, reference, prediction, "wb"))
    except pesq.PesqError as error:
        raise ValueError(f"PESQ cannot score these signals: {type(error).__name__}: {error}") from None


def stoi(prediction, reference, sampling_rate: int) -> float:
    """Short-time objective intelligibility (Taal et al. 2011) from `pystoi`, 0 to 1; higher is better."""
    import pystoi

    prediction, reference = _check_pair(prediction, reference)
    return float(pystoi.stoi(reference, prediction, _check_rate(sampling_rate), extended=False))


# Every metric of the table as `score(prediction, reference, sampling_rate)`, keyed by its `evaluate` module's name.
SCORERS = {
    "si_sdr": lambda prediction, reference, sampling_rate: si_sdr(prediction, reference),
    "mel_distance": mel_distance,
    "stft_distance": lambda prediction, reference, sampling_rate: stft_distance(prediction, reference),
    "wideband_pesq": wideband_pesq,
    "stoi": stoi,
}
