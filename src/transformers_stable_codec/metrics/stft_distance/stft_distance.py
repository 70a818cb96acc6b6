"""Multi-scale STFT distance as an `evaluate` metric:
`evaluate.load(transformers_stable_codec.metrics.metric_path("stft_distance"))`."""

import evaluate

from transformers_stable_codec.metrics import functional, module


_DESCRIPTION = """Multi-scale STFT distance, as in DAC's evaluation: for Hann windows of 2048 and 512 samples (hop a
quarter window), the mean absolute difference of log10 power spectra (magnitudes clamped at 1e-5) plus the mean absolute
difference of magnitudes, summed over the two scales. 0 for identical signals; lower is better."""

_CITATION = """@inproceedings{kumar2023high,
  title={High-Fidelity Audio Compression with Improved {RVQGAN}},
  author={Kumar, Rithesh and Seetharaman, Prem and Luebs, Alejandro and Kumar, Ishaan and Kumar, Kundan},
  booktitle={NeurIPS},
  year={2023}
}"""

_INPUTS = """
Args:
    predictions (list of 1-D float arrays): reconstructed waveforms.
    references (list of 1-D float arrays): the originals, each as long as its prediction (more than 1024 samples).
Returns:
    stft_distance (float): the mean distance over the pairs.
"""


class StftDistance(evaluate.Metric):
    def _info(self):
        return module.waveform_pair_info(_DESCRIPTION, _CITATION, _INPUTS, ["https://arxiv.org/abs/2306.06546"])

    def _compute(self, predictions, references):
        return {"stft_distance": module.mean_score(functional.stft_distance, predictions, references)}
