"""Time limits: a job past its soft limit, and one stuck past its hard limit (the pool process is
killed), each end FAILED (timeout) after exactly one execution; a worker whose broker lease is
not longer than the hard limit refuses to start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flaskmodel.settings import Settings
from tests import databases, procs
from tests.conftest import redis_db
from tests.reliability.harness import Harness, fake_models, open_harness

pytestmark = pytest.mark.reliability

SOFT, HARD, LEASE = 1, 2, 4


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Harness]:
    root = fake_models(
        tmp_path_factory.mktemp("limit-models"),
        {"sleepy": {"delay_ms": 1500}, "stuck": {"hang_on": 5.0, "hang_ms": 3500}},
    )
    logs = tmp_path_factory.mktemp("limit-logs")
    settings = Settings(
        models_root=root,
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.TIME_LIMITS)},
        worker={"heartbeat_seconds": 0.5, "concurrency": 2},
        runtime={"backend": "fake"},
        jobs={"soft_time_limit": SOFT, "time_limit": HARD, "visibility_timeout": LEASE},
    )
    with open_harness(settings, logs) as harness:
        yield harness


def run_over_limit(limits: Harness, model: str, x: float) -> dict[str, str]:
    response = limits.submit(model, [[x, 0.0, 0.0, 0.0]])
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    record = limits.wait_job(job_id, timeout=20)
    # Past the lease and a restore sweep: a redelivery would have started by now.
    time.sleep(LEASE + 2)
    return limits.record(job_id) | {"first_seen_state": record.get("state", "")}


def test_job_past_its_soft_limit_fails_once(limits: Harness) -> None:
    record = run_over_limit(limits, "sleepy", 1.0)
    print(
        f"\nsoft limit: state {record['state']} ({record.get('error_type')}), "
        f"deliveries {record['attempts']}, completions {record.get('completions', 0)}"
    )
    assert record["first_seen_state"] == record["state"] == "FAILED"
    assert record["error_type"] == "timeout"
    assert record["attempts"] == "1"
    assert "completions" not in record


def test_job_past_its_hard_limit_fails_once(limits: Harness) -> None:
    pool = set(limits.pool_children())
    record = run_over_limit(limits, "stuck", 5.0)
    killed = pool - set(limits.pool_children())
    print(
        f"\nhard limit: state {record['state']} ({record.get('error_type')}: "
        f"{record.get('error_message')}), deliveries {record['attempts']}, "
        f"pool processes killed {len(killed)}"
    )
    assert record["first_seen_state"] == record["state"] == "FAILED"
    assert record["error_type"] == "timeout"
    assert "hard time limit" in record["error_message"]
    assert record["attempts"] == "1"
    assert len(killed) == 1


def test_worker_refuses_a_lease_not_longer_than_the_hard_limit(
    tmp_path: Path, redis_url: str
) -> None:
    settings = Settings(models_root=tmp_path, redis={"url": redis_url}).env()
    settings.update(
        FLASKMODEL_JOBS__SOFT_TIME_LIMIT="50",
        FLASKMODEL_JOBS__TIME_LIMIT="60",
        FLASKMODEL_JOBS__VISIBILITY_TIMEOUT="60",
    )
    done = subprocess.run(
        [sys.executable, "-m", "flaskmodel", "worker"],
        env={
            "PATH": str(procs.VENV_BIN) + ":/usr/bin:/bin",
            # A checkout run against another's venv (its src first) keeps its own code.
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
            **settings,
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).decode()
    print(f"\nlease 60 s, hard limit 60 s: exit {done.returncode}")
    assert done.returncode != 0
    assert "visibility_timeout must exceed jobs.time_limit" in output
