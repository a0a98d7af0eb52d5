"""Overload: more submits than the workers can take. Admission control bounds each model's
unfinished jobs; past the bound a submit gets 429 with a Retry-After priced from the queue depth
and the measured throughput. Counts the answers (only 2xx/429/503, all JSON) and that every
accepted job completes; a one-minute soak at twice the measured capacity also bounds the growth
of every gunicorn and Celery process's resident memory.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from flaskmodel.settings import Settings
from tests import databases
from tests.conftest import redis_db
from tests.reliability.harness import Harness, children, fake_models, ledger, open_harness

pytestmark = pytest.mark.reliability

BOUND = 20
CLIENTS = 12
PER_CLIENT = 25


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Harness]:
    root = fake_models(tmp_path_factory.mktemp("busy-models"), {"busy": {"delay_ms": 40}})
    logs = tmp_path_factory.mktemp("busy-logs")
    settings = Settings(
        models_root=root,
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.OVERLOAD)},
        worker={"heartbeat_seconds": 0.5, "concurrency": 1},
        runtime={"backend": "fake"},
        jobs={"max_pending": BOUND},
    )
    with open_harness(settings, logs) as harness:
        yield harness


def test_overload_answers_429_with_retry_after_and_loses_nothing(busy: Harness) -> None:
    answers: Counter[int] = Counter()
    not_json: list[int] = []
    retry_afters: list[int] = []
    accepted: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        session = requests.Session()
        for i in range(PER_CLIENT):
            response = session.post(
                busy.url("/v1/jobs"),
                json={"model": "busy", "inputs": [[float(c), float(i), 0.0, 0.0]]},
                timeout=10,
            )
            with lock:
                answers[response.status_code] += 1
                try:
                    body = response.json()
                except ValueError:
                    not_json.append(response.status_code)
                    continue
                if response.status_code == 202:
                    accepted.append(body["job_id"])
                elif response.status_code in (429, 503):
                    retry_afters.append(int(response.headers["Retry-After"]))
            time.sleep(0.02)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    offered = time.monotonic() - started
    counted = ledger(busy.wait_terminal(accepted, timeout=60))
    spread = Counter(retry_afters)
    print(
        f"\noverload: {CLIENTS * PER_CLIENT} submits in {offered:.1f}s against a bound of {BOUND} "
        f"(capacity ~25 jobs/s): answers {dict(answers)}, non-JSON {len(not_json)}, "
        f"Retry-After values {dict(sorted(spread.items()))}; accepted {len(accepted)}, "
        f"ledger {counted}"
    )
    assert set(answers) <= {202, 429, 503}, answers
    assert not not_json
    assert answers[429] > 0, "the offered load never reached the bound"
    assert counted["lost"] == 0
    assert counted["states"] == {"SUCCEEDED": len(accepted)}
    assert busy.redis.zcard("flaskmodel:pending:busy") == 0, "finished jobs still counted"


SOAK_SECONDS = 60.0
SOAK_CLIENTS = 8


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    return int(status.split("VmRSS:")[1].split()[0])


def memory(harness: Harness) -> dict[str, int]:
    """RSS (KiB) of each gunicorn worker and of the Celery worker's main and pool processes."""
    assert harness.web is not None and harness.worker is not None
    found = {f"gunicorn {pid}": rss_kib(pid) for pid in children(harness.web.pid)}
    found[f"celery main {harness.worker.pid}"] = rss_kib(harness.worker.pid)
    found.update({f"celery pool {pid}": rss_kib(pid) for pid in harness.pool_children()})
    return found


class PacedLoad:
    """``rate`` submits a second spread over ``SOAK_CLIENTS`` threads for ``seconds``."""

    def __init__(self, harness: Harness, rate: float, seconds: float) -> None:
        self.harness = harness
        self.interval = SOAK_CLIENTS / rate
        self.seconds = seconds
        self.answers: Counter[int] = Counter()
        self.not_json: Counter[int] = Counter()
        self.accepted: list[str] = []
        self.lock = threading.Lock()

    def _client(self, c: int) -> None:
        session = requests.Session()
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < self.seconds:
            response = session.post(
                self.harness.url("/v1/jobs"),
                json={"model": "busy", "inputs": [[float(c), float(n), 0.0, 0.0]]},
                timeout=10,
            )
            with self.lock:
                self.answers[response.status_code] += 1
                try:
                    body = response.json()
                except ValueError:
                    self.not_json[response.status_code] += 1
                else:
                    if response.status_code == 202:
                        self.accepted.append(body["job_id"])
            n += 1
            # Open loop: the next submit is due at a fixed time, however long this one took.
            time.sleep(max(0.0, started + n * self.interval - time.monotonic()))

    def run(self) -> float:
        threads = [threading.Thread(target=self._client, args=(c,)) for c in range(SOAK_CLIENTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.seconds + 60)
        return time.monotonic() - started


def test_two_times_capacity_for_a_minute_keeps_answers_jobs_and_memory_in_bounds(
    busy: Harness,
) -> None:
    # Capacity, measured: saturate for a few seconds; count the jobs that ended after the first
    # second and before the load stopped.
    warmup = PacedLoad(busy, rate=80, seconds=5)
    started = time.time()
    warmup.run()
    stopped = time.time()
    ends = [
        datetime.fromisoformat(r["finished_at"]).timestamp()
        for r in busy.wait_terminal(warmup.accepted, timeout=30).values()
        if r.get("finished_at")
    ]
    capacity = sum(started + 1 <= end <= stopped for end in ends) / (stopped - started - 1)
    before = memory(busy)
    soak = PacedLoad(busy, rate=2 * capacity, seconds=SOAK_SECONDS)
    offered_for = soak.run()
    counted = ledger(busy.wait_terminal(soak.accepted, timeout=60))
    after = memory(busy)
    growth = {name: after.get(name, 0) - kib for name, kib in before.items()}
    offered = sum(soak.answers.values())
    print(
        f"\nsoak: capacity measured {capacity:.1f} jobs/s; offered {offered} submits in "
        f"{offered_for:.0f}s ({offered / offered_for:.1f}/s, 2x); answers {dict(soak.answers)}, "
        f"non-JSON {dict(soak.not_json)}; accepted {len(soak.accepted)} "
        f"({len(soak.accepted) / offered_for:.1f}/s), ledger {counted}; RSS KiB before "
        f"{before}, growth {growth}"
    )
    assert capacity > 5, "the warm-up measured no throughput"
    assert offered / offered_for > 1.8 * capacity, "the load generator fell behind"
    assert set(soak.answers) <= {202, 429, 503}, soak.answers
    assert not soak.not_json
    assert soak.answers[429] > 0
    assert counted["states"] == {"SUCCEEDED": len(soak.accepted)}
    assert counted["result_writes"] == {1: len(soak.accepted)}
    assert all(after.get(name, 0) > 0 for name in before), "a process was replaced mid-soak"
    assert max(growth.values()) < 16 * 1024, f"RSS grew by {max(growth.values())} KiB"
