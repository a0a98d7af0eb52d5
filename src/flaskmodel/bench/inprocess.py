"""The in-process limit: the loaded signature called directly, no server in between."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flaskmodel.runtime.savedmodel import SavedModelRuntime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    model: str
    batch: int
    items_per_second: float
    ms_per_call: float


def measure(models_root: Path, model: str, batches: tuple[int, ...], seconds: float) -> list[Limit]:
    """Items/s of ``model`` version 1 at each batch size, each measured for about ``seconds``."""
    runtime = SavedModelRuntime(model, 1, models_root / model / "1")
    runtime.load()
    spec = runtime.spec.inputs[0]
    rng = np.random.default_rng(0)
    limits = []
    for batch in batches:
        shape = [batch, *[d or 1 for d in spec.shape[1:]]]
        inputs = {spec.name: rng.random(shape, dtype=np.float32)}
        runtime.predict(inputs)  # trace this batch size once
        calls = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            runtime.predict(inputs)
            calls += 1
        elapsed = time.perf_counter() - started
        limits.append(Limit(model, batch, calls * batch / elapsed, elapsed / calls * 1000))
        logger.info("%s batch %d: %.0f items/s", model, batch, limits[-1].items_per_second)
    runtime.close()
    return limits
