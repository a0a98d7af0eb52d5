"""``/metrics`` after real traffic through two gunicorn workers and a Celery worker."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack
from tests.metrics.conftest import TINY_ROW, run_job, series_job, tensor_job

pytestmark = pytest.mark.e2e

PREDICT = ("/v1/models/<path:path>", "POST")
JOB = ("/v1/jobs/<job_id>", "GET")
SENT_PREDICTS = 12
SERIES_SLICES = 24

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: Stack) -> Samples:
    response = requests.get(stack.url("/metrics"), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_of(samples: Samples, route: tuple[str, str], status: str) -> float:
    return value(
        samples,
        "flaskmodel_http_requests_total",
        route=route[0],
        method=route[1],
        status=status,
    )


def wait_until(stack: Stack, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds (every process flushes within its interval)."""
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(stack)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_metrics_aggregate_every_process(observed_stack: Stack) -> None:
    stack = observed_stack
    before = wait_until(stack, lambda s: True)
    # Separate connections: the two gunicorn workers take turns accepting them.
    for _ in range(SENT_PREDICTS):
        answer = requests.post(
            stack.url("/v1/models/tiny:predict"), json={"instances": [TINY_ROW]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
    bad = requests.post(stack.url("/v1/models/tiny:predict"), json={"instances": [[1.0]]})
    assert bad.status_code == 400
    assert requests.get(stack.url("/v1/jobs/no-such-job"), timeout=10).status_code == 404
    assert requests.get(stack.url("/no/such/path"), timeout=10).status_code == 404
    run_job(stack, tensor_job())
    run_job(stack, series_job())

    def sent(samples: Samples) -> bool:
        return requests_of(samples, PREDICT, "200") - requests_of(before, PREDICT, "200") >= 12

    after = wait_until(stack, sent)
    time.sleep(0.5)  # the job views' own counts, a flush later
    after = scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Counts equal what was sent, whichever gunicorn worker served each request.
    assert requests_of(after, PREDICT, "200") - requests_of(before, PREDICT, "200") == 12
    assert requests_of(after, PREDICT, "400") - requests_of(before, PREDICT, "400") == 1
    assert requests_of(after, JOB, "404") - requests_of(before, JOB, "404") == 1
    assert (
        requests_of(after, ("unmatched", "GET"), "404")
        - requests_of(before, ("unmatched", "GET"), "404")
        == 1
    )
    assert delta("flaskmodel_errors_total", type="job_not_found", where="web") == 1
    assert delta("flaskmodel_errors_total", type="invalid_input", where="web") == 1

    # The latency histogram agrees with the counter and is cumulative.
    labels = {"route": PREDICT[0], "method": "POST", "status": "200"}
    count = value(after, "flaskmodel_http_request_duration_seconds_count", **labels)
    assert count == requests_of(after, PREDICT, "200")
    assert value(after, "flaskmodel_http_request_duration_seconds_sum", **labels) > 0
    assert_histogram(after, "flaskmodel_http_request_duration_seconds", labels)

    # Jobs: submitted and finished by model and kind, and by state from Redis.
    assert delta("flaskmodel_jobs_submitted_total", model="tiny", kind="tensor") == 1
    assert delta("flaskmodel_jobs_submitted_total", model="ct_classifier", kind="series") == 1
    finished = "flaskmodel_jobs_finished_total"
    assert delta(finished, model="tiny", kind="tensor", state="SUCCEEDED") == 1
    assert delta(finished, model="ct_classifier", kind="series", state="SUCCEEDED") == 1
    assert delta("flaskmodel_jobs", state="SUCCEEDED") == 2
    assert value(after, "flaskmodel_jobs", state="QUEUED") == 0
    assert delta("flaskmodel_job_queue_wait_seconds_count", model="tiny") == 1
    assert delta("flaskmodel_job_duration_seconds_count", model="tiny", kind="tensor") == 1

    # Worker-side series: examples batched, model latency, per-slice preprocessing.
    assert delta("flaskmodel_batch_size_sum", model="tiny") == SENT_PREDICTS + 1
    assert_histogram(after, "flaskmodel_batch_size", {"model": "tiny"})
    inference = {"model": "tiny", "version": "1"}
    assert delta("flaskmodel_inference_duration_seconds_count", **inference) >= 1
    assert delta("flaskmodel_inference_duration_seconds_sum", **inference) > 0
    assert delta("flaskmodel_batch_queue_wait_seconds_count", model="tiny") == SENT_PREDICTS + 1
    per_slice = "flaskmodel_series_slice_preprocess_seconds"
    assert delta(f"{per_slice}_count", model="ct_classifier") == SERIES_SLICES
    assert delta(f"{per_slice}_sum", model="ct_classifier") > 0
    assert delta("flaskmodel_series_slice_decode_seconds_count", model="ct_classifier") == 24

    # Gauges read at scrape time.
    assert value(after, "flaskmodel_queue_depth", model="tiny", queue="jobs") == 0
    assert value(after, "flaskmodel_queue_depth", model="tiny", queue="sync") == 0
    assert value(after, "flaskmodel_workers", state="ready") == 1
    assert value(after, "flaskmodel_model_ready_workers", model="ct_classifier") == 1
    ready = [k for k in after if k[0] == "flaskmodel_worker_ready"]
    assert len(ready) == 1 and after[ready[0]] == 1
    # The batch-size tuner's choice, per worker process and model version.
    limits = [
        k for k in after if k[0] == "flaskmodel_batch_size_limit" and ("model", "tiny") in k[1]
    ]
    assert len(limits) == 1 and 1 <= after[limits[0]] <= 32

    # Every scrape, whichever gunicorn worker answers it, shows the same totals.
    seen = {requests_of(scrape(stack), PREDICT, "200") for _ in range(6)}
    assert seen == {requests_of(after, PREDICT, "200")}


def assert_histogram(samples: Samples, name: str, labels: dict[str, str]) -> None:
    buckets = sorted(
        (float(dict(k[1])["le"]), v)
        for k, v in samples.items()
        if k[0] == f"{name}_bucket" and {n: v for n, v in k[1] if n != "le"} == labels
    )
    assert buckets, f"no buckets of {name}{labels}"
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert math.isinf(buckets[-1][0])
    assert buckets[-1][1] == value(samples, f"{name}_count", **labels)
