"""Per-process accumulation of counters and histograms, flushed to one Redis hash.

Recording is a dictionary update under a lock: no Redis round trip on the hot path. A background
thread (a greenlet under gunicorn's gevent worker) sends what accumulated every
``metrics.flush_seconds`` in one pipeline, one ``HINCRBY`` (counts) or ``HINCRBYFLOAT`` (sums)
per series, into ``flaskmodel:metrics``; every process on every host adds into the same fields,
so the hash holds the totals. The web tier renders them on scrape (``exposition``).

Fork safety: a forked child starts with nothing pending and no flusher (its parent flushes its
own counts); the flusher starts again on the child's first use. Counts are flushed at exit too:
``atexit`` for gunicorn workers, ``WorkerContext.stop`` for Celery pool processes (which leave
through ``os._exit``). A failed flush keeps its counts for the next one.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from bisect import bisect_left
from collections.abc import Callable

import redis

from flaskmodel.metrics.catalogue import Metric
from flaskmodel.storage.redis import key

logger = logging.getLogger(__name__)

METRICS_KEY = key("metrics")

# (sample name, label values incl. le) -> amount
_Series = tuple[str, tuple[str, ...]]


class MetricsRecorder:
    """Thread-safe in-memory counters and histogram buckets of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[_Series, int] = {}
        self._sums: dict[_Series, float] = {}
        self._names: dict[str, Metric] = {}
        self._flusher: _Flusher | None = None

    def inc(self, metric: Metric, labels: tuple[str, ...], amount: int = 1) -> None:
        """Add ``amount`` to a counter."""
        series = (metric.name, labels)
        with self._lock:
            self._names[metric.name] = metric
            self._counts[series] = self._counts.get(series, 0) + amount

    def observe(self, metric: Metric, labels: tuple[str, ...], value: float) -> None:
        """Record one observation of a histogram."""
        index = bisect_left(metric.buckets, value)
        le = repr(metric.buckets[index]) if index < len(metric.buckets) else "+Inf"
        bucket = (metric.name + "_bucket", (*labels, le))
        total = (metric.name + "_sum", labels)
        with self._lock:
            self._names[metric.name] = metric
            self._counts[bucket] = self._counts.get(bucket, 0) + 1
            self._sums[total] = self._sums.get(total, 0.0) + value

    def observe_many(self, metric: Metric, labels: tuple[str, ...], values: list[float]) -> None:
        for value in values:
            self.observe(metric, labels, value)

    def take(self) -> tuple[dict[_Series, int], dict[_Series, float], dict[str, Metric]]:
        """What accumulated since the last take (and forget it)."""
        with self._lock:
            taken = self._counts, self._sums, dict(self._names)
            self._counts, self._sums = {}, {}
        return taken

    def give_back(self, counts: dict[_Series, int], sums: dict[_Series, float]) -> None:
        """Return counts a failed flush could not send (they go with the next one)."""
        with self._lock:
            for series, amount in counts.items():
                self._counts[series] = self._counts.get(series, 0) + amount
            for series, value in sums.items():
                self._sums[series] = self._sums.get(series, 0.0) + value

    def flush(self, client: redis.Redis) -> int:
        """Send what accumulated to Redis; returns how many series were written (raises
        ``redis.RedisError``, the counts kept for the next flush)."""
        counts, sums, names = self.take()
        if not counts and not sums:
            return 0
        pipe = client.pipeline(transaction=False)
        for (sample, values), amount in counts.items():
            pipe.hincrby(METRICS_KEY, field(sample, values, names), amount)
        for (sample, values), total in sums.items():
            pipe.hincrbyfloat(METRICS_KEY, field(sample, values, names), total)
        try:
            pipe.execute()
        except redis.RedisError:
            self.give_back(counts, sums)
            raise
        return len(counts) + len(sums)

    def start(self, connect: Callable[[], redis.Redis], interval: float, target: str) -> None:
        """Flush every ``interval`` seconds from a background thread of this process to the
        Redis ``target`` names (``connect`` makes its client, once, in the flusher). Idempotent;
        a new ``target`` (another app in the same process: tests) replaces the flusher."""
        flusher = self._flusher
        if flusher is not None and flusher.pid == os.getpid() and flusher.target == target:
            return
        with self._lock:
            old, self._flusher = self._flusher, _Flusher(self, connect, interval, target)
            flusher = self._flusher
        if old is not None and old.pid == os.getpid():
            old.stop(flush=False)
        flusher.start()

    def stop(self) -> None:
        """Stop the flusher after one last flush (at process exit)."""
        flusher = self._flusher
        if flusher is not None and flusher.pid == os.getpid():
            flusher.stop()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._counts, self._sums = {}, {}
        self._flusher = None


def field(sample: str, values: tuple[str, ...], names: dict[str, Metric]) -> str:
    """The hash field of one sample: its name, a tab, its labels as a JSON object.

    A histogram is stored as ``<name>_bucket`` per bucket (``le``: its upper bound; counts not
    cumulative) and ``<name>_sum``; its count is the sum of its buckets."""
    metric = names.get(sample)
    labels = list(metric.labels) if metric else []
    if metric is None:
        metric = names[sample.rpartition("_")[0]]
        labels = [*metric.labels, "le"] if sample.endswith("_bucket") else list(metric.labels)
    return sample + "\t" + json.dumps(dict(zip(labels, values, strict=True)), sort_keys=True)


class _Flusher:
    def __init__(
        self,
        recorder: MetricsRecorder,
        connect: Callable[[], redis.Redis],
        interval: float,
        target: str,
    ) -> None:
        self.pid = os.getpid()
        self.target = target
        self._recorder = recorder
        self._connect = connect
        self._interval = interval
        self._client: redis.Redis | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()
        atexit.register(self.stop)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        try:
            if self._client is None:
                self._client = self._connect()
            self._recorder.flush(self._client)
        except (redis.RedisError, ValueError) as exc:
            if not self._failing:  # once per outage, not every interval
                logger.warning("metrics flush failed (counts kept for the next one): %s", exc)
            self._failing = True
        else:
            self._failing = False

    def stop(self, *, flush: bool = True) -> None:
        if self.pid != os.getpid() or self._stop.is_set():
            return
        self._stop.set()
        if flush:
            self.flush()


RECORDER = MetricsRecorder()
os.register_at_fork(after_in_child=RECORDER._after_fork)
