"""``/metrics``: the totals every process flushed to Redis, plus gauges read at scrape time.

prometheus-client only formats here (a one-off registry holding one collector per scrape); its
per-process registry is never used, so every scrape shows the same totals whichever gunicorn
worker answers it. Gauges (jobs by state, queue depths, worker readiness) are read from Redis in
one pipeline per scrape.

The standard ``process_*`` series (CPU seconds, resident memory, open file descriptors, start
time; prometheus-client's ``ProcessCollector``, read from ``/proc``) describe the one process
answering the scrape, unlabelled as every Prometheus client exports them. Worker processes'
figures are not summed in: CPU seconds and memory of different processes do not add up into a
meaningful total, and labelled per-process series would need a per-process key in Redis kept
alive and pruned; per-host node exporters or cAdvisor cover them.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from flaskmodel.jobs.broker import model_queue
from flaskmodel.jobs.records import JobRecords
from flaskmodel.metrics import catalogue
from flaskmodel.metrics.catalogue import BY_NAME
from flaskmodel.metrics.recorder import METRICS_KEY
from flaskmodel.storage.workers import WorkerRegistry
from flaskmodel.sync import frames

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# kombu's Redis transport keeps messages of priority p > 0 in "<queue>\x06\x16<p>".
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


@dataclass
class _Histogram:
    buckets: Counter[str] = field(default_factory=Counter)
    total: float = 0.0


def render(client: redis.Redis, workers: WorkerRegistry, queue_base: str) -> bytes:
    """The exposition text of every series."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(client, workers, queue_base))
    ProcessCollector(registry=registry)  # registers itself; nothing where /proc is absent
    return generate_latest(registry)


class _Scrape(Collector):
    def __init__(self, client: redis.Redis, workers: WorkerRegistry, queue_base: str) -> None:
        self._redis = client
        self._workers = workers
        self._queue_base = queue_base

    def collect(self) -> Iterator[Metric]:
        raw: dict[str, str] = self._redis.hgetall(METRICS_KEY)  # type: ignore[assignment]
        yield from recorded_families(raw)
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        beats = self._workers.live()
        states = {"ready": 0, "loading": 0, "draining": 0}
        ready = GaugeMetricFamily(
            catalogue.WORKER_READY.name, catalogue.WORKER_READY.help, labels=["worker"]
        )
        limit = GaugeMetricFamily(
            catalogue.BATCH_SIZE_LIMIT.name,
            catalogue.BATCH_SIZE_LIMIT.help,
            labels=["worker", "model", "version"],
        )
        per_model: Counter[str] = Counter()
        models: set[str] = set()
        for beat in beats:
            ready.add_metric([beat.worker_id], 1.0 if beat.ready else 0.0)
            for advert in beat.models.values():
                for version, stats in advert.stats.items():
                    if stats.batch_size_limit is not None:
                        labels = [beat.worker_id, advert.name, str(version)]
                        limit.add_metric(labels, stats.batch_size_limit)
            states["draining" if beat.draining else "ready" if beat.ready else "loading"] += 1
            models.update(beat.models, beat.errors)
            if beat.ready:
                per_model.update(list(beat.models))  # names, not the adverts
        yield ready
        yield limit
        workers = GaugeMetricFamily(
            catalogue.WORKERS.name, catalogue.WORKERS.help, labels=["state"]
        )
        for state, count in states.items():
            workers.add_metric([state], count)
        yield workers
        served = GaugeMetricFamily(
            catalogue.MODEL_WORKERS.name, catalogue.MODEL_WORKERS.help, labels=["model"]
        )
        for model in sorted(models):
            served.add_metric([model], per_model[model])
        yield served
        yield self._queues(sorted(models))
        yield self._jobs()

    def _queues(self, models: list[str]) -> Metric:
        depth = GaugeMetricFamily(
            catalogue.QUEUE_DEPTH.name, catalogue.QUEUE_DEPTH.help, labels=["model", "queue"]
        )
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            for suffix in _PRIORITY_SUFFIXES:
                pipe.llen(model_queue(self._queue_base, model) + suffix)
            pipe.llen(frames.sync_queue_key(model))
        lengths = pipe.execute() if models else []
        step = len(_PRIORITY_SUFFIXES) + 1
        for i, model in enumerate(models):
            row = lengths[i * step : (i + 1) * step]
            depth.add_metric([model, "jobs"], sum(row[:-1]))
            depth.add_metric([model, "sync"], row[-1])
        return depth

    def _jobs(self) -> Metric:
        counts = JobRecords(self._redis).count_states()
        jobs = GaugeMetricFamily(catalogue.JOBS.name, catalogue.JOBS.help, labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state], count)
        return jobs


def recorded_families(raw: dict[str, str]) -> Iterator[Metric]:
    """Counter and histogram families from the fields of ``flaskmodel:metrics``."""
    counters: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
    histograms: dict[str, dict[tuple[str, ...], _Histogram]] = defaultdict(dict)
    for name_and_labels, value in raw.items():
        sample, _, encoded = name_and_labels.partition("\t")
        try:
            labels: dict[str, str] = json.loads(encoded)
        except ValueError:
            continue
        metric = BY_NAME.get(sample)
        if metric is not None and metric.kind == "counter":
            values = tuple(labels.get(n, "") for n in metric.labels)
            counters[metric.name][values] = float(value)
            continue
        base, _, suffix = sample.rpartition("_")
        metric = BY_NAME.get(base)
        if metric is None or metric.kind != "histogram":
            continue  # written by another version of FlaskModel
        values = tuple(labels.get(n, "") for n in metric.labels)
        histogram = histograms[metric.name].setdefault(values, _Histogram())
        if suffix == "bucket":
            histogram.buckets[labels.get("le", "+Inf")] += int(float(value))
        elif suffix == "sum":
            histogram.total = float(value)
    for metric in catalogue.RECORDED:
        if metric.kind == "counter":
            counter = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
            for values, total in sorted(counters[metric.name].items()):
                counter.add_metric(values, total)
            yield counter
        else:
            family = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
            for values, histogram in sorted(histograms[metric.name].items()):
                family.add_metric(values, _cumulative(metric.buckets, histogram), histogram.total)
            yield family


def _cumulative(bounds: tuple[float, ...], histogram: _Histogram) -> list[tuple[str, float]]:
    running = 0
    rows = []
    for bound in bounds:
        running += histogram.buckets[repr(bound)]
        rows.append((repr(bound), float(running)))  # Go's float spelling, as stored
    rows.append(("+Inf", float(running + histogram.buckets["+Inf"])))
    return rows
