"""Graceful shutdown and readiness: SIGTERM to the worker finishes its in-flight jobs and loses
none, ``/readyz`` turns 503 as soon as the worker starts draining; SIGTERM to gunicorn finishes
its in-flight requests with 2xx while ``/readyz`` says 503 and new connections are refused; and
a model that fails to load leaves the service live but not ready, its submits answered 503, never
202.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from flaskmodel.settings import Settings
from flaskmodel.storage.catalog import JOB_MAX_AGE
from flaskmodel.storage.workers import WorkerRegistry
from tests import databases, procs
from tests.conftest import redis_db
from tests.reliability.harness import Harness, fake_models, ledger, open_harness

pytestmark = pytest.mark.reliability


def test_sigterm_drains_the_worker_and_loses_nothing(tmp_path: Path, redis_url: str) -> None:
    root = fake_models(tmp_path / "models", {"slowish": {"delay_ms": 800}})
    settings = Settings(
        models_root=root,
        data_root=tmp_path,
        run_dir=tmp_path,
        redis={"url": redis_db(redis_url, databases.SHUTDOWN)},
        worker={"heartbeat_seconds": 0.5, "concurrency": 2},
        runtime={"backend": "fake"},
    )
    with open_harness(settings, tmp_path) as harness:
        ids = [
            harness.submit("slowish", [[float(i), 0.0, 0.0, 0.0]]).json()["job_id"]
            for i in range(10)
        ]
        procs.wait_for(
            lambda: sum(harness.record(i)["state"] == "RUNNING" for i in ids) == 2, 10, "running"
        )
        in_flight = [i for i in ids if harness.record(i)["state"] == "RUNNING"]
        assert harness.worker is not None
        harness.worker.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        while requests.get(harness.url("/readyz"), timeout=5).status_code != 503:
            assert time.monotonic() - sent < 5, "/readyz never said not ready"
            time.sleep(0.02)
        not_ready_after = time.monotonic() - sent
        readyz = requests.get(harness.url("/readyz"), timeout=5).json()
        # A submit may be decided on a heartbeat snapshot up to JOB_MAX_AGE old (the submits
        # above just read one); past that it sees the worker draining.
        time.sleep(JOB_MAX_AGE)
        draining_submit = harness.submit("slowish", [[99.0, 0.0, 0.0, 0.0]])
        harness.worker.wait(30)
        exited_after = time.monotonic() - sent
        at_exit = Counter(harness.record(i)["state"] for i in ids)
        finished_in_flight = [harness.record(i)["state"] for i in in_flight]
        harness.start_worker()
        counted = ledger(harness.wait_terminal(ids, timeout=30))
    print(
        f"\nSIGTERM: /readyz 503 after {not_ready_after:.2f}s "
        f"(draining {[w['draining'] for w in readyz['workers']]}), submit while draining "
        f"{draining_submit.status_code}, worker exited after {exited_after:.2f}s with jobs "
        f"{dict(at_exit)} (in flight at SIGTERM: {finished_in_flight}); after a new worker: "
        f"ledger {counted}"
    )
    assert not_ready_after < 1.0
    assert readyz["workers"] and all(w["draining"] for w in readyz["workers"])
    assert draining_submit.status_code == 503
    assert finished_in_flight == ["SUCCEEDED", "SUCCEEDED"]
    assert counted["states"] == {"SUCCEEDED": 10}
    assert counted["attempts"] == {1: 10}, "an in-flight job was run again"
    assert counted["result_writes"] == {1: 10}


def test_model_that_fails_to_load_is_live_not_ready_and_refused(
    tmp_path: Path, redis_url: str
) -> None:
    root = fake_models(tmp_path / "models", {"good": {}})
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "fake.json").write_text("{ this is not a model")
    settings = Settings(
        models_root=root,
        data_root=tmp_path,
        run_dir=tmp_path,
        redis={"url": redis_db(redis_url, databases.SHUTDOWN_DRAIN)},
        worker={"heartbeat_seconds": 0.5, "concurrency": 1},
        runtime={"backend": "fake"},
    )
    harness = Harness(settings, tmp_path)
    try:
        args = [sys.executable, "-m", "flaskmodel", "worker"]
        harness.worker = procs.spawn(args, settings, tmp_path / "worker.log")
        registry = WorkerRegistry(harness.redis, ttl=1.5)
        procs.wait_for(lambda: any("broken" in w.errors for w in registry.live()), 60, "load error")
        harness.start_web()
        healthz = requests.get(harness.url("/healthz"), timeout=5)
        readyz = requests.get(harness.url("/readyz"), timeout=5)
        answers: Counter[int] = Counter()
        retry_after = set()
        for i in range(20):
            response = harness.submit("broken", [[float(i), 0.0, 0.0, 0.0]])
            answers[response.status_code] += 1
            retry_after.add(response.headers.get("Retry-After"))
            assert "broken" in response.json()["error"]
        assert harness.worker.poll() is None
    finally:
        harness.close()
    print(
        f"\nfailed model: /healthz {healthz.status_code}, /readyz {readyz.status_code} "
        f"(errors {[w['errors'] for w in readyz.json()['workers']]}), 20 submits: "
        f"{dict(answers)}, Retry-After {retry_after}"
    )
    assert healthz.status_code == 200
    assert readyz.status_code == 503
    assert any("broken" in w["errors"] for w in readyz.json()["workers"])
    assert answers == {503: 20}
    assert None not in retry_after


def test_sigterm_to_gunicorn_finishes_in_flight_requests_and_stops_taking_new_ones(
    tmp_path: Path, redis_url: str
) -> None:
    root = fake_models(tmp_path / "models", {"slowish": {"delay_ms": 700}})
    settings = Settings(
        models_root=root,
        data_root=tmp_path,
        run_dir=tmp_path,
        redis={"url": redis_db(redis_url, databases.SHUTDOWN_SWEEP)},
        worker={"heartbeat_seconds": 0.5, "concurrency": 2},
        runtime={"backend": "fake"},
    )
    in_flight = 6
    with open_harness(settings, tmp_path) as harness:
        assert harness.web is not None
        url = harness.url("/v1/models/slowish:predict")
        answers: list[tuple[int, dict[str, Any]]] = []

        def call(i: int) -> None:
            response = requests.post(url, json={"instances": [[float(i), 0, 0, 0]]}, timeout=30)
            answers.append((response.status_code, response.json()))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(in_flight)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # every call is in gunicorn, waiting on the worker (3 rounds of 0.7 s)
        harness.web.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        seen: Counter[str] = Counter()
        # /readyz 200 once a probe saw the drain begin, or later than the master needs to pass
        # SIGTERM on to its worker (a probe in that instant may still be answered ready).
        late_ready = 0
        first_not_ready = None
        while time.monotonic() - sent < 1.5:
            try:
                status = requests.get(harness.url("/readyz"), timeout=2).status_code
                seen[f"readyz {status}"] += 1
            except requests.ConnectionError:
                status = 0
                seen["refused"] += 1
            if status != 200 and first_not_ready is None:
                first_not_ready = time.monotonic() - sent
            late_ready += status == 200 and (
                first_not_ready is not None or time.monotonic() - sent > 0.2
            )
            time.sleep(0.05)
        for thread in threads:
            thread.join(30)
        harness.web.wait(15)
        exited_after = time.monotonic() - sent
        try:
            requests.get(harness.url("/healthz"), timeout=2)
            after_exit = "answered"
        except requests.ConnectionError:
            after_exit = "refused"
    statuses = Counter(status for status, _ in answers)
    print(
        f"\ngunicorn SIGTERM with {in_flight} sync predicts in flight: answers {dict(statuses)}; "
        f"probes in the next 1.5 s {dict(seen)}, first not-ready after "
        f"{first_not_ready if first_not_ready is None else round(first_not_ready, 3)}s; "
        f"exited after {exited_after:.2f}s (exit code {harness.web.returncode}); "
        f"new connection after exit {after_exit}"
    )
    assert statuses == {200: in_flight}, answers
    assert all(len(body["predictions"]) == 1 for _, body in answers)
    assert late_ready == 0, "a draining gunicorn said ready"
    assert seen["refused"] > 0, "gunicorn kept taking new connections while draining"
    assert first_not_ready is not None and first_not_ready < 0.2
    assert harness.web.returncode == 0
    assert after_exit == "refused"
