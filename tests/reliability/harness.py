"""Fault-injection harness: fake models, a worker to kill and restart, gunicorn, and counting.

Each reliability module opens its own ``Harness`` (its own Redis database, or its own
redis-server), so killing its processes never disturbs the session's stacks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import requests

from flaskmodel.settings import Settings
from flaskmodel.storage.redis import key
from tests import procs
from tests.conftest import FAKE_SPEC, write_fake_model

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def fake_models(root: Path, models: dict[str, dict[str, Any]]) -> Path:
    """Fake models ``name -> fake.json options``, each with dynamic batching off."""
    for name, options in models.items():
        write_fake_model(root, name, 1, {**FAKE_SPEC, **options})
        (root / name / "flaskmodel.json").write_text(json.dumps({"max_batch_delay_ms": 0}))
    return root


def children(pid: int) -> list[int]:
    """The child pids of ``pid`` (Linux ``/proc``)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []
    return sorted(set(found))


class Harness:
    """One worker (killable, restartable) and one gunicorn over ``settings``."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.worker: subprocess.Popen[bytes] | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.redis = redis.Redis.from_url(settings.redis_url(), decode_responses=True)
        self.worker_starts = 0

    def url(self, path: str) -> str:
        return self.base_url + path

    def start_worker(self, *, timeout: float = 60) -> subprocess.Popen[bytes]:
        self.worker_starts += 1
        log = self.logs / f"worker-{self.worker_starts}.log"
        self.worker = procs.start_worker(self.settings, log, timeout=timeout)
        return self.worker

    def start_web(self) -> None:
        port = procs.free_port()
        self.web = procs.start_gunicorn(self.settings, self.logs / "gunicorn.log", port)
        self.base_url = f"http://127.0.0.1:{port}"

    def pool_children(self) -> list[int]:
        assert self.worker is not None
        return children(self.worker.pid)

    def kill_group(self) -> None:
        """``kill -9`` the worker's whole process group (main process and pool)."""
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(10)

    def kill_child(self) -> int:
        """``kill -9`` one pool process alone; Celery replaces it. Returns its pid."""
        pool = self.pool_children()
        assert pool, "worker has no pool processes"
        os.kill(pool[0], signal.SIGKILL)
        return pool[0]

    def submit(
        self, model: str, inputs: list[list[float]], timeout: float = 5
    ) -> requests.Response:
        return requests.post(
            self.url("/v1/jobs"), json={"model": model, "inputs": inputs}, timeout=timeout
        )

    def record(self, job_id: str) -> dict[str, str]:
        found: dict[str, str] = self.redis.hgetall(key("job", job_id))
        return found

    def wait_terminal(self, ids: Iterable[str], timeout: float) -> dict[str, dict[str, str]]:
        """Records of ``ids`` once all are terminal, or as they are when ``timeout`` passes."""
        ids = list(ids)
        deadline = time.monotonic() + timeout
        while True:
            records = {i: self.record(i) for i in ids}
            pending = [i for i, r in records.items() if r.get("state") not in TERMINAL]
            if not pending or time.monotonic() > deadline:
                return records
            time.sleep(0.2)

    def wait_job(self, job_id: str, timeout: float = 20) -> dict[str, str]:
        return self.wait_terminal([job_id], timeout)[job_id]

    def log_lines(self, needle: str) -> int:
        """How many lines of this harness's worker logs contain ``needle``."""
        return sum(
            line.count(needle) > 0
            for log in self.logs.glob("worker-*.log")
            for line in log.read_text(errors="replace").splitlines()
        )

    def close(self) -> None:
        for proc in (self.web, self.worker):
            if proc is not None:
                procs.stop(proc)
        self.redis.close()


@contextmanager
def open_harness(settings: Settings, logs: Path, *, web: bool = True) -> Iterator[Harness]:
    harness = Harness(settings, logs)
    try:
        harness.start_worker()
        if web:
            harness.start_web()
        yield harness
    finally:
        harness.close()


def ledger(records: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What happened to a set of jobs: states, deliveries, executions and result writes."""
    states = Counter(r.get("state", "MISSING") for r in records.values())
    attempts = Counter(int(r.get("attempts", 0)) for r in records.values())
    completions = Counter(int(r.get("completions", 0)) for r in records.values())
    writes = Counter(int(r.get("result_writes", 0)) for r in records.values())
    return {
        "jobs": len(records),
        "states": dict(states),
        "attempts": dict(sorted(attempts.items())),
        "completions": dict(sorted(completions.items())),
        "result_writes": dict(sorted(writes.items())),
        "lost": sum(1 for r in records.values() if r.get("state") not in TERMINAL),
        "redelivered": sum(1 for r in records.values() if int(r.get("attempts", 0)) > 1),
    }
