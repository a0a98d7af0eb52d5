"""What a batcher records: ``BatchStats``, its counters of calls, batches, batch sizes and queue
waits (the ``batching`` block of a model's status), and ``record_call``, each model call in the
process's metrics."""

from __future__ import annotations

import threading

from flaskmodel.errors import FlaskModelError
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.schemas import BatchStatsView, ModelSpec

#: Upper bounds (seconds) of the queue wait histogram's buckets.
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class BatchStats:
    """Thread-safe counters of one batcher (read with ``snapshot``)."""

    def __init__(self, limit: int | None = None) -> None:
        self._lock = threading.Lock()
        self._view = BatchStatsView(
            queue_wait_buckets={str(b): 0 for b in WAIT_BUCKETS} | {"+Inf": 0},
            batch_size_limit=limit,
        )

    def submitted(self, rows: int) -> None:
        with self._lock:
            self._view.requests += 1
            self._view.items += rows

    def expired(self, count: int = 1) -> None:
        with self._lock:
            self._view.expired += count

    def batch(
        self, rows: int, waits: list[float], *, failed: bool = False, limit: int | None = None
    ) -> None:
        """One model call; ``limit``: the tuner's batch size limit after it."""
        with self._lock:
            view = self._view
            if limit is not None:
                view.batch_size_limit = limit
            view.batches += 1
            view.failed_batches += int(failed)
            view.batch_sizes[rows] = view.batch_sizes.get(rows, 0) + 1
            for wait in waits:
                view.queue_wait_seconds_sum += wait
                view.queue_wait_seconds_max = max(view.queue_wait_seconds_max, wait)
                bucket = next((str(b) for b in WAIT_BUCKETS if wait <= b), "+Inf")
                view.queue_wait_buckets[bucket] += 1

    def snapshot(self) -> BatchStatsView:
        with self._lock:
            return self._view.model_copy(deep=True)


def record_call(
    spec: ModelSpec, rows: int, waits: list[float], seconds: float, error: Exception | None = None
) -> None:
    """One model call in the process's metrics (flushed to Redis in the background)."""
    model = (spec.name,)
    RECORDER.observe(catalogue.BATCH_SIZE, model, rows)
    RECORDER.observe_many(catalogue.BATCH_QUEUE_WAIT, model, waits)
    RECORDER.observe(catalogue.INFERENCE_DURATION, (spec.name, str(spec.version)), seconds)
    if error is not None:
        kind = error.type if isinstance(error, FlaskModelError) else "model_error"
        RECORDER.inc(catalogue.ERRORS, (kind, "model"))
