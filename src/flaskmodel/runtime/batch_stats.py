"""What a batcher records: ``BatchStats``, its counters of calls, batches, batch sizes and queue
waits (the ``batching`` block of a model's status), and ``record_call``, each model call in the
process's metrics."""

from __future__ import annotations

import threading
from bisect import bisect_left

from flaskmodel.errors import FlaskModelError
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.schemas import BatchStatsView, ModelSpec

#: Upper bounds (seconds) of the queue wait histogram's buckets.
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class BatchStats:
    """Thread-safe counters of one batcher (read with ``snapshot``). Plain numbers under a lock:
    the pydantic view is built only for a snapshot (each assignment to it cost a validation, and
    every call made several)."""

    def __init__(self, limit: int | None = None) -> None:
        self._lock = threading.Lock()
        self._requests = self._items = self._batches = self._expired = self._failed = 0
        self._sizes: dict[int, int] = {}
        self._wait_sum = self._wait_max = 0.0
        self._waits = [0] * (len(WAIT_BUCKETS) + 1)  # per bucket, "+Inf" last
        self._limit = limit

    def submitted(self, rows: int, calls: int = 1) -> None:
        """``calls`` calls of ``rows`` examples in all came in."""
        with self._lock:
            self._requests += calls
            self._items += rows

    def expired(self, count: int = 1) -> None:
        with self._lock:
            self._expired += count

    def batch(
        self, rows: int, waits: list[float], *, failed: bool = False, limit: int | None = None
    ) -> None:
        """One model call; ``limit``: the tuner's batch size limit after it."""
        with self._lock:
            if limit is not None:
                self._limit = limit
            self._batches += 1
            self._failed += int(failed)
            self._sizes[rows] = self._sizes.get(rows, 0) + 1
            if waits:
                self._wait_sum += sum(waits)
                self._wait_max = max(self._wait_max, *waits)
                counts = self._waits
                for wait in waits:
                    counts[bisect_left(WAIT_BUCKETS, wait)] += 1  # the first bound >= wait

    def snapshot(self) -> BatchStatsView:
        with self._lock:
            bounds = [str(b) for b in WAIT_BUCKETS] + ["+Inf"]
            return BatchStatsView(
                requests=self._requests,
                items=self._items,
                batches=self._batches,
                expired=self._expired,
                failed_batches=self._failed,
                batch_sizes=dict(self._sizes),
                queue_wait_seconds_sum=self._wait_sum,
                queue_wait_seconds_max=self._wait_max,
                queue_wait_buckets=dict(zip(bounds, self._waits, strict=True)),
                batch_size_limit=self._limit,
            )


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
