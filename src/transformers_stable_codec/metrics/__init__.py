"""The objective metrics of the paper's table (SI-SDR, mel distance, STFT distance, wideband PESQ, STOI) as
Hugging Face `evaluate` modules shipped with the package, and as plain functions (`functional`).

    import evaluate
    from transformers_stable_codec.metrics import metric_path

    pesq = evaluate.load(metric_path("wideband_pesq"))
    pesq.compute(predictions=[decoded], references=[original], sampling_rate=16000)  # {"wideband_pesq": ...}
"""

from pathlib import Path


METRIC_NAMES = ("si_sdr", "mel_distance", "stft_distance", "wideband_pesq", "stoi")


def metric_path(name: str) -> str:
    """The folder to give `evaluate.load` for one of `METRIC_NAMES`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; the metrics are {', '.join(METRIC_NAMES)}.")
    return str(Path(__file__).resolve().parent / name)


def metric_paths() -> dict[str, str]:
    """Every metric's folder for `evaluate.load`, by name."""
    return {name: metric_path(name) for name in METRIC_NAMES}


__all__ = ["METRIC_NAMES", "metric_path", "metric_paths"]
