"""SI-SDR as an `evaluate` metric: `evaluate.load(transformers_stable_codec.metrics.metric_path("si_sdr"))`."""

import evaluate

from transformers_stable_codec.metrics import functional, module


_DESCRIPTION = """Scale-invariant signal-to-distortion ratio in dB: the energy of the reference's scaled projection
over the energy of the rest, after removing each signal's mean. Insensitive to the gain of the prediction. Higher is
better: identical signals score over 100 dB (the limit is floating-point precision), white noise at 20 dB SNR scores
about 20 dB."""

_CITATION = """@inproceedings{le2019sdr,
  title={{SDR} -- half-baked or well done?},
  author={Le Roux, Jonathan and Wisdom, Scott and Erdogan, Hakan and Hershey, John R.},
  booktitle={ICASSP},
  year={2019}
}"""


class SiSdr(evaluate.Metric):
    def _info(self):
        return module.waveform_pair_info(
            _DESCRIPTION,
            _CITATION,
            ["https://arxiv.org/abs/1811.02508"],
            "si_sdr (float): the mean SI-SDR over the pairs, in dB.",
        )

    def _compute(self, predictions, references):
        return {"si_sdr": module.mean_score(functional.si_sdr, predictions, references)}
