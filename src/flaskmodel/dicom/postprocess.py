"""Turn per-slice class log-probabilities into per-slice labels.

Input is ``log_probs[n_slices, n_classes]`` in the series' sort order; classes are numbered in
anatomical order, class 0 the most cranial. ``monotonic`` (the default for body-region
classification) returns the label sequence that is monotonic along the slices and maximises the
summed log-probability, trying both directions; ``smooth`` median-filters the per-slice argmax;
``none`` is the plain argmax. Every result's ``score`` is the summed log-probability of the labels
it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from flaskmodel.errors import InvalidRequest

POSTPROCESSORS = ("monotonic", "smooth", "none")

Direction = Literal["head-first", "feet-first"]


@dataclass(frozen=True)
class PostprocessResult:
    """Labels per slice, the direction a monotonic fit chose (else ``None``), and the score."""

    labels: list[int]
    direction: Direction | None
    score: float | None


def monotonic(log_probs: np.ndarray) -> PostprocessResult:
    """Best monotonic labelling over both directions (ties go to head-first).

    ``head-first``: labels never decrease along the slices (slice 0 is the most cranial);
    ``feet-first``: labels never increase. Dynamic programming, O(n_slices × n_classes).
    An empty input gives empty labels, no direction and no score.
    """
    scores = _checked(log_probs)
    if scores.shape[0] == 0:
        return PostprocessResult(labels=[], direction=None, score=None)
    head_labels, head_score = _best_non_decreasing(scores)
    # Feet-first is head-first with the class axis reversed: label c there is k-1-c here.
    feet_reversed, feet_score = _best_non_decreasing(scores[:, ::-1])
    if head_score >= feet_score:
        return PostprocessResult(_as_list(head_labels), "head-first", head_score)
    feet_labels = scores.shape[1] - 1 - feet_reversed
    return PostprocessResult(_as_list(feet_labels), "feet-first", feet_score)


def smooth(log_probs: np.ndarray, window: int = 5) -> PostprocessResult:
    """Median filter (odd ``window``, edges padded with the edge label) of the argmax labels."""
    scores = _checked(log_probs)
    if window < 1 or window % 2 == 0:
        raise InvalidRequest(f"smoothing window must be a positive odd number, got {window}")
    labels = np.argmax(scores, axis=1) if scores.shape[0] else np.zeros(0, dtype=np.intp)
    if labels.size and window > 1:
        half = window // 2
        padded = np.pad(labels, half, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, window)
        # With an odd window the median is one of the labels, so the sort picks it exactly.
        labels = np.sort(windows, axis=1)[:, half]
    return PostprocessResult(_as_list(labels), None, _score(scores, labels))


def none(log_probs: np.ndarray) -> PostprocessResult:
    """The per-slice argmax."""
    scores = _checked(log_probs)
    labels = np.argmax(scores, axis=1) if scores.shape[0] else np.zeros(0, dtype=np.intp)
    return PostprocessResult(_as_list(labels), None, _score(scores, labels))


_DISPATCH: dict[str, Callable[[np.ndarray], PostprocessResult]] = {
    "monotonic": monotonic,
    "smooth": smooth,
    "none": none,
}


def postprocess(name: str, log_probs: np.ndarray) -> PostprocessResult:
    """Run the post-processor called ``name`` (one of ``POSTPROCESSORS``)."""
    try:
        function = _DISPATCH[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown postprocessor {name!r}; use one of {', '.join(POSTPROCESSORS)}"
        ) from None
    return function(log_probs)


def _best_non_decreasing(scores: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-decreasing labels maximising the summed score, and that sum.

    ``best[c]`` is the best total of slices ``0..i`` ending in class ``c``; the next slice may only
    follow a class ``<= c``, so it adds its score to the running prefix maximum of ``best``.
    """
    n, k = scores.shape
    classes = np.arange(k)
    back = np.zeros((n, k), dtype=np.intp)
    best = scores[0].copy()
    for i in range(1, n):
        prefix = np.maximum.accumulate(best)
        # The argmax of best[0..c] is the last class <= c where best reached its running maximum.
        back[i] = np.maximum.accumulate(np.where(best >= prefix, classes, 0))
        best = prefix + scores[i]
    labels = np.empty(n, dtype=np.intp)
    labels[-1] = int(np.argmax(best))
    for i in range(n - 1, 0, -1):
        labels[i - 1] = back[i, labels[i]]
    return labels, float(best[labels[-1]])


def _checked(log_probs: np.ndarray) -> np.ndarray:
    """``log_probs`` as float64 ``[n, k]`` with ``k >= 1`` and no NaN (``-inf`` is allowed)."""
    scores = np.asarray(log_probs, dtype=np.float64)
    if scores.ndim != 2 or (scores.shape[0] and scores.shape[1] == 0):
        raise InvalidRequest(f"log_probs must be [n_slices, n_classes], got shape {scores.shape}")
    if np.isnan(scores).any():
        raise InvalidRequest("log_probs contains NaN")
    return scores


def _score(scores: np.ndarray, labels: np.ndarray) -> float | None:
    if labels.size == 0:
        return None
    return float(scores[np.arange(labels.size), labels].sum())


def _as_list(labels: np.ndarray) -> list[int]:
    return [int(label) for label in labels]
