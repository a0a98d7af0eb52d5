"""Per-slice label post-processing (flaskmodel.dicom.postprocess)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from flaskmodel.dicom.postprocess import (
    POSTPROCESSORS,
    PostprocessResult,
    monotonic,
    none,
    postprocess,
    smooth,
)
from flaskmodel.errors import InvalidRequest


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def brute_force(log_probs: np.ndarray) -> tuple[float, float]:
    """Best summed score over all non-decreasing and all non-increasing label sequences."""
    n, k = log_probs.shape
    best_up = best_down = -math.inf
    for labels in itertools.product(range(k), repeat=n):
        total = sum(float(log_probs[i, c]) for i, c in enumerate(labels))
        steps = np.diff(labels)
        if np.all(steps >= 0):
            best_up = max(best_up, total)
        if np.all(steps <= 0):
            best_down = max(best_down, total)
    return best_up, best_down


def total(log_probs: np.ndarray, labels: list[int]) -> float:
    return float(sum(log_probs[i, c] for i, c in enumerate(labels)))


def test_monotonic_matches_brute_force_on_random_cases() -> None:
    rng = np.random.default_rng(2024)
    directions = set()
    for _ in range(400):
        n = int(rng.integers(1, 7))
        k = int(rng.integers(1, 5))
        log_probs = log_softmax(rng.normal(scale=2.0, size=(n, k)))
        best_up, best_down = brute_force(log_probs)

        result = monotonic(log_probs)

        assert len(result.labels) == n
        assert result.score == pytest.approx(max(best_up, best_down), abs=1e-9)
        assert total(log_probs, result.labels) == pytest.approx(result.score, abs=1e-9)
        steps = np.diff(result.labels)
        if result.direction == "head-first":
            assert np.all(steps >= 0)
            assert best_up >= best_down - 1e-9
        else:
            assert result.direction == "feet-first"
            assert np.all(steps <= 0)
            assert best_down > best_up + 1e-12
        directions.add(result.direction)
    assert directions == {"head-first", "feet-first"}  # both branches were exercised


def test_monotonic_handles_impossible_classes() -> None:
    # log 0 = -inf: the fit must route around impossible classes rather than produce NaN.
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8], [0.0, 0.0, 1.0]])
    with np.errstate(divide="ignore"):  # log(0) = -inf is the point here
        log_probs = np.log(probs)
    result = monotonic(log_probs)
    assert result.labels == [0, 0, 2, 2] or result.labels == [0, 1, 2, 2]
    assert result.direction == "head-first"
    assert result.score is not None and math.isfinite(result.score)


def synthetic_head_first(rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Noisy probabilities for 24 slices walking through 4 regions head to feet."""
    truth = [0] * 6 + [1] * 7 + [2] * 5 + [3] * 6
    probs = np.full((len(truth), 4), 0.1)
    probs[np.arange(len(truth)), truth] = 0.7
    probs += rng.uniform(0, 0.25, size=probs.shape)
    probs[9] = [0.05, 0.1, 0.05, 0.8]  # one confidently wrong slice
    probs /= probs.sum(axis=1, keepdims=True)
    return np.log(probs), truth


def test_direction_detection_head_first_and_feet_first() -> None:
    log_probs, truth = synthetic_head_first(np.random.default_rng(5))

    head = monotonic(log_probs)
    feet = monotonic(log_probs[::-1])

    assert head.direction == "head-first"
    assert head.labels == truth
    assert feet.direction == "feet-first"
    assert feet.labels == truth[::-1]
    assert feet.score == pytest.approx(head.score)
    assert none(log_probs).labels[9] == 3  # the plain argmax keeps the wrong slice


def test_ties_go_to_head_first() -> None:
    uniform = np.log(np.full((5, 3), 1 / 3))
    assert monotonic(uniform).direction == "head-first"
    assert monotonic(np.log(np.array([[0.2, 0.8]]))).direction == "head-first"


def test_empty_input() -> None:
    empty = np.zeros((0, 4))
    for name in POSTPROCESSORS:
        assert postprocess(name, empty).labels == []
    assert monotonic(empty) == PostprocessResult(labels=[], direction=None, score=None)


def test_smooth_removes_a_single_slice_spike() -> None:
    argmax = [0, 0, 0, 0, 3, 0, 0, 0, 1, 1, 1, 1, 1]
    log_probs = np.log(np.full((len(argmax), 4), 0.1))
    log_probs[np.arange(len(argmax)), argmax] = np.log(0.7)

    result = smooth(log_probs)

    assert result.labels == [0] * 8 + [1] * 5
    assert result.direction is None
    assert smooth(log_probs, window=1).labels == argmax
    assert smooth(log_probs[:2], window=7).labels == [0, 0]  # shorter than the window


@pytest.mark.parametrize("window", [0, 2, 4, -3])
def test_smooth_refuses_even_or_non_positive_windows(window: int) -> None:
    with pytest.raises(InvalidRequest, match="odd"):
        smooth(np.zeros((4, 2)), window=window)


def test_none_is_argmax() -> None:
    log_probs = log_softmax(np.random.default_rng(3).normal(size=(50, 6)))
    result = none(log_probs)
    assert result.labels == np.argmax(log_probs, axis=1).tolist()
    assert result.direction is None
    assert result.score == pytest.approx(float(log_probs.max(axis=1).sum()))
    assert all(type(label) is int for label in result.labels)


def test_dispatch() -> None:
    log_probs, _ = synthetic_head_first(np.random.default_rng(8))
    assert postprocess("monotonic", log_probs) == monotonic(log_probs)
    assert postprocess("smooth", log_probs) == smooth(log_probs)
    assert postprocess("none", log_probs) == none(log_probs)
    with pytest.raises(InvalidRequest, match="unknown postprocessor 'median'"):
        postprocess("median", log_probs)


@pytest.mark.parametrize(
    "bad", [np.zeros(5), np.zeros((2, 3, 4)), np.zeros((3, 0)), np.array([[0.0, np.nan]])]
)
def test_malformed_log_probs_are_refused(bad: np.ndarray) -> None:
    for name in POSTPROCESSORS:
        with pytest.raises(InvalidRequest):
            postprocess(name, bad)
