"""What the `evaluate` modules of the metrics share: their inputs (pairs of 1-D waveforms) and the mean over pairs."""

from collections.abc import Callable

import datasets
import evaluate
import numpy as np


def waveform_pair_info(description: str, citation: str, inputs_description: str, reference_urls: list[str]):
    """`MetricInfo` of a metric that scores `predictions[i]` against `references[i]`, both 1-D waveforms."""
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
