"""STOI as an `evaluate` metric: `evaluate.load(transformers_stable_codec.metrics.metric_path("stoi"))`."""

import evaluate

from transformers_stable_codec.metrics import functional, module


_DESCRIPTION = """Short-time objective intelligibility, from the `pystoi` package (which resamples to 10 kHz and drops
silent frames), 0 to 1; higher is better. Signals shorter than about 1.2 s of speech are too short to score (pystoi
warns and returns 1e-5)."""

_CITATION = """@article{taal2011algorithm,
  title={An algorithm for intelligibility prediction of time--frequency weighted noisy speech},
  author={Taal, Cees H. and Hendriks, Richard C. and Heusdens, Richard and Jensen, Jesper},
  journal={IEEE Transactions on Audio, Speech, and Language Processing},
  volume={19}, number={7}, pages={2125--2136},
  year={2011}
}"""


class Stoi(evaluate.Metric):
    def _info(self):
        return module.waveform_pair_info(
            _DESCRIPTION,
            _CITATION,
            ["https://pypi.org/project/pystoi/"],
            "stoi (float): the mean STOI over the pairs.",
            sampling_rate="sampling rate of both, in Hz.",
        )

    def _compute(self, predictions, references, sampling_rate=None):  # None: refused with a ValueError
        return {"stoi": module.mean_score(functional.stoi, predictions, references, sampling_rate=sampling_rate)}
