"""Multi-scale mel distance as an `evaluate` metric:
`evaluate.load(transformers_stable_codec.metrics.metric_path("mel_distance"))`."""

import evaluate

from transformers_stable_codec.metrics import functional, module


_DESCRIPTION = """Multi-scale mel distance, as in DAC's evaluation: for Hann windows of 2048 and 512 samples (hop a
quarter window) with 150 and 80 Slaney mel bands from 0 Hz to Nyquist, the mean absolute difference of log10 mel power
(mel magnitudes clamped at 1e-5) plus the mean absolute difference of mel magnitudes, summed over the two scales. 0 for
identical signals; lower is better."""


class MelDistance(evaluate.Metric):
    def _info(self):
        return module.waveform_pair_info(
            _DESCRIPTION,
            module.DAC_CITATION,
            ["https://arxiv.org/abs/2306.06546"],
            "mel_distance (float): the mean distance over the pairs (signals need more than 1024 samples).",
            sampling_rate="sampling rate of both, in Hz (sets the mel scale).",
        )

    def _compute(self, predictions, references, sampling_rate=None):  # None: refused with a ValueError
        return {
            "mel_distance": module.mean_score(
                functional.mel_distance, predictions, references, sampling_rate=sampling_rate
            )
        }
