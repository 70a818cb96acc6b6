"""What the `evaluate` modules of the metrics share: their inputs (pairs of 1-D waveforms) and the mean over pairs."""

from collections.abc import Callable

import datasets
import evaluate
import numpy as np


DAC_CITATION = """@inproceedings{kumar2023high,
  title={High-Fidelity Audio Compression with Improved {RVQGAN}},
  author={Kumar, Rithesh and Seetharaman, Prem and Luebs, Alejandro and Kumar, Ishaan and Kumar, Kundan},
  booktitle={NeurIPS},
  year={2023}
}"""


def waveform_pair_info(
    description: str, citation: str, reference_urls: list[str], result: str, sampling_rate: str | None = None
):
    """`MetricInfo` of a metric that scores `predictions[i]` against `references[i]`, both 1-D waveforms of the same
    length; `result` says what the returned number is, `sampling_rate` what the metric's argument of that name is."""
    rate_line = f"\n    sampling_rate (int): {sampling_rate}" if sampling_rate else ""
    inputs_description = (
        "\nArgs:\n    predictions (list of 1-D float arrays): reconstructed waveforms.\n"
        "    references (list of 1-D float arrays): the originals, each as long as its prediction."
        f"{rate_line}\nReturns:\n    {result}\n"
    )
    return evaluate.MetricInfo(
        module_type="metric",
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features(
            {
                "predictions": datasets.Sequence(datasets.Value("float32")),
                "references": datasets.Sequence(datasets.Value("float32")),
            }
        ),
        reference_urls=reference_urls,
    )


def mean_score(score: Callable[..., float], predictions, references, **kwargs) -> float:
    """Mean of `score(prediction, reference, **kwargs)` over the pairs."""
    if len(predictions) == 0:
        raise ValueError("No predictions to score.")
    return float(np.mean([score(np.asarray(p), np.asarray(r), **kwargs) for p, r in zip(predictions, references)]))
