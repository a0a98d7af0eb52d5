"""The recorder against a real Redis: processes add up, forks start empty, nothing is lost."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from flaskmodel.metrics import catalogue
from flaskmodel.metrics.recorder import METRICS_KEY, MetricsRecorder
from flaskmodel.web.exposition import recorded_families
from tests import databases
from tests.conftest import redis_db


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    db = redis.Redis.from_url(redis_db(redis_url, databases.RECORDER), decode_responses=True)
    db.delete(METRICS_KEY)
    yield db
    db.close()


def exposition(client: redis.Redis) -> dict[tuple[str, str], float]:
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    class Once:
        def collect(self):  # type: ignore[no-untyped-def]
            return recorded_families(client.hgetall(METRICS_KEY))  # type: ignore[arg-type]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Once())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels.get("le", s.labels.get("status", ""))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_two_processes_add_up_and_histograms_stay_consistent(client: redis.Redis) -> None:
    web_a, web_b = MetricsRecorder(), MetricsRecorder()
    labels = ("/x", "GET", "200")
    for recorder, latencies in ((web_a, [0.003, 0.2]), (web_b, [0.003, 7.0, 100.0])):
        for latency in latencies:
            recorder.inc(catalogue.HTTP_REQUESTS, labels)
            recorder.observe(catalogue.HTTP_DURATION, labels, latency)
        recorder.flush(client)
    assert web_a.flush(client) == 0  # nothing new: no round trip's worth of series
    seen = exposition(client)
    assert seen[("flaskmodel_http_requests_total", "200")] == 5
    duration = "flaskmodel_http_request_duration_seconds"
    assert seen[(f"{duration}_bucket", "0.005")] == 2
    assert seen[(f"{duration}_bucket", "0.25")] == 3
    assert seen[(f"{duration}_bucket", "10.0")] == 4
    assert seen[(f"{duration}_bucket", "+Inf")] == seen[(f"{duration}_count", "200")] == 5
    assert seen[(f"{duration}_sum", "200")] == pytest.approx(107.206)


def test_a_failed_flush_keeps_its_counts(client: redis.Redis) -> None:
    recorder = MetricsRecorder()
    recorder.inc(catalogue.ERRORS, ("timeout", "job"), 3)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        recorder.flush(dead)
    dead.close()
    recorder.inc(catalogue.ERRORS, ("timeout", "job"))
    recorder.flush(client)
    assert exposition(client)[("flaskmodel_errors_total", "")] == 4


def test_a_forked_child_starts_empty_and_flushes_its_own(client: redis.Redis) -> None:
    from flaskmodel.metrics.recorder import RECORDER  # noqa: PLC0415

    RECORDER.take()
    RECORDER.inc(catalogue.JOBS_SUBMITTED, ("m", "tensor"), 5)  # the parent's, unflushed
    pid = os.fork()
    if pid == 0:  # the child: counts only what it records itself
        code = 1
        try:
            RECORDER.inc(catalogue.JOBS_SUBMITTED, ("m", "tensor"))
            counts, sums, _ = RECORDER.take()
            RECORDER.give_back(counts, sums)
            RECORDER.flush(redis.Redis(connection_pool=client.connection_pool))
            code = 0 if list(counts.values()) == [1] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's own flusher (started by an earlier test's app in this process) may send its
    # 5 at any moment, so the parent's share is checked only after its explicit flush.
    RECORDER.flush(client)
    assert exposition(client)[("flaskmodel_jobs_submitted_total", "")] == 6
