"""Wideband PESQ as an `evaluate` metric:
`evaluate.load(transformers_stable_codec.metrics.metric_path("wideband_pesq"))`."""

import evaluate

from transformers_stable_codec.metrics import functional, module


_DESCRIPTION = """Wideband PESQ (ITU-T P.862.2), the MOS-LQO of the `pesq` package's ITU reference implementation, from
1.04 to 4.64; higher is better. Defined for 16 kHz audio only. Signals without detectable speech raise a ValueError."""

_CITATION = """@misc{itu2007p862_2,
  title={{P.862.2}: Wideband extension to Recommendation {P.862} for the assessment of wideband telephone networks and
         speech codecs},
  author={{ITU-T}},
  year={2007}
}"""


class WidebandPesq(evaluate.Metric):
    def _info(self):
        return module.waveform_pair_info(
            _DESCRIPTION,
            _CITATION,
            ["https://www.itu.int/rec/T-REC-P.862.2", "https://pypi.org/project/pesq/"],
            "wideband_pesq (float): the mean MOS-LQO over the pairs.",
            sampling_rate="must be 16000 (the default).",
        )

    def _compute(self, predictions, references, sampling_rate=functional.PESQ_SAMPLING_RATE):
        return {
            "wideband_pesq": module.mean_score(
                functional.wideband_pesq, predictions, references, sampling_rate=sampling_rate
            )
        }
