"""Phone error rate of a CTC head: greedy decoding, then the Levenshtein distance (rapidfuzz) over phoneme indices."""

from collections.abc import Sequence

import torch
from rapidfuzz.distance import Levenshtein


def greedy_ctc_decode(logits: torch.Tensor, lengths: torch.Tensor | None = None, blank: int = 80) -> list[list[int]]:
    """Best path of each sequence: argmax per frame, repeats merged, blanks removed.

    `logits`: (batch, frames, classes); `lengths`: valid frames per sequence (all frames when None).
    """
    best = logits.argmax(dim=-1).cpu()
    sequences = []
    for index, path in enumerate(best.tolist()):
        if lengths is not None:
            path = path[: int(lengths[index])]
        decoded, previous = [], None
        for label in path:
            if label != previous and label != blank:
                decoded.append(label)
            previous = label
        sequences.append(decoded)
    return sequences


def phone_errors(predictions: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(edit operations, reference phonemes) summed over the pairs: PER = errors / reference length."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets.")
    errors = sum(Levenshtein.distance(list(p), list(t)) for p, t in zip(predictions, targets))
    return errors, sum(len(target) for target in targets)


def phone_error_rate(predictions: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> float:
    """Substitutions, insertions and deletions over all reference phonemes (corpus-level PER, as WER is computed)."""
    errors, total = phone_errors(predictions, targets)
    if total == 0:
        raise ValueError("The references hold no phonemes: the phone error rate is undefined.")
    return errors / total


__all__ = ["greedy_ctc_decode", "phone_error_rate", "phone_errors"]
