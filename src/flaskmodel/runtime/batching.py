"""Pure batching functions: which calls can share a model call, how to merge and split them.

No threads and no clocks here (``runtime/batcher.py`` owns the timing loop), so each rule is
tested on its own. Calls can share a batch when every input agrees on dtype and on every
dimension after the first (the batch dimension): ``batch_key`` names that signature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flaskmodel.errors import InternalError, InvalidInput

BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]


def batch_rows(inputs: dict[str, np.ndarray]) -> int:
    """The batch size of one call: the first dimension all its inputs share."""
    if not inputs:
        raise InvalidInput("a model call needs at least one input")
    rows = {name: (a.shape[0] if a.ndim else -1) for name, a in inputs.items()}
    sizes = set(rows.values())
    if len(sizes) != 1 or -1 in sizes:
        raise InvalidInput(f"inputs must share a batch dimension, got first dimensions {rows}")
    return sizes.pop()


def batch_key(inputs: dict[str, np.ndarray]) -> BatchKey:
    """What calls must agree on to be merged: names, dtypes and per-example shapes."""
    return tuple(sorted((name, a.dtype.str, tuple(a.shape[1:])) for name, a in inputs.items()))


def plan_batch(
    calls: Sequence[tuple[BatchKey, int]], max_batch_size: int
) -> tuple[list[int], bool]:
    """Indices of the calls the next batch takes, and whether that batch is full.

    The batch is led by the oldest call (index 0) and takes later calls with the same key in
    arrival order while their rows fit in ``max_batch_size``; it stops at the first that does not
    fit (order is kept within a signature). A call bigger than ``max_batch_size`` on its own goes
    alone. Full means it cannot grow: ``max_batch_size`` reached or a same-key call left out.
    """
    if not calls:
        return [], False
    head_key, rows = calls[0]
    chosen = [0]
    for index in range(1, len(calls)):
        call_key, call_rows = calls[index]
        if call_key != head_key:
            continue
        if rows + call_rows > max_batch_size:
            return chosen, True
        chosen.append(index)
        rows += call_rows
    return chosen, rows >= max_batch_size


def merge_inputs(calls: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One model input from several calls with the same key: concatenated along dimension 0."""
    if len(calls) == 1:
        return calls[0]
    return {name: np.concatenate([c[name] for c in calls], axis=0) for name in calls[0]}


def split_outputs(
    outputs: dict[str, np.ndarray], sizes: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Each caller's rows of a merged model output, in call order."""
    if len(sizes) == 1:
        return [outputs]
    total = sum(sizes)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise InternalError(
                f"output {name!r} has shape {list(value.shape)}; a batch of {total} examples "
                "needs it to lead with the batch dimension to be split per caller"
            )
    bounds = np.cumsum([0, *sizes])
    return [
        {name: value[bounds[i] : bounds[i + 1]] for name, value in outputs.items()}
        for i in range(len(sizes))
    ]
