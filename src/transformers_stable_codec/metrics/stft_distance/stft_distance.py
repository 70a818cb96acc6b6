"""Multi-scale STFT distance as an `evaluate` metric:
`evaluate.load(transformers_stable_codec.metrics.metric_path("stft_distance"))`."""

import evaluate

from transformers_stable_codec.metrics import functional, module


_DESCRIPTION = """Multi-scale STFT distance, as in DAC's evaluation: for Hann windows of 2048 and 512 samples (hop a
quarter window), the mean absolute difference of log10 power spectra (magnitudes clamped at 1e-5) plus the mean
absolute difference of magnitudes, summed over the two scales. 0 for identical signals; lower is better."""


class StftDistance(evaluate.Metric):
    def _info(self):
        return module.waveform_pair_info(
            _DESCRIPTION,
            module.DAC_CITATION,
            ["https://arxiv.org/abs/2306.06546"],
            "stft_distance (float): the mean distance over the pairs (signals need more than 1024 samples).",
        )

    def _compute(self, predictions, references):
        return {"stft_distance": module.mean_score(functional.stft_distance, predictions, references)}
