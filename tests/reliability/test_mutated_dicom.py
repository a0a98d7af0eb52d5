"""Mutated DICOM files: every series job ends (FAILED naming a file, or SUCCEEDED) within its
time limit, and no worker process crashes.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from datetime import datetime

import pytest
import requests

from tests.conftest import CHEST, SAMPLES, Stack
from tests.web.test_jobs_e2e import wait_job

pytestmark = pytest.mark.reliability

SERIES = 12


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: cut short, bytes flipped in the header or the pixel data, a chunk zeroed."""
    kind = rng.choice(["truncate", "flip_header", "flip_pixels", "zero_chunk"])
    buffer = bytearray(data)
    if kind == "truncate":
        return bytes(buffer[: rng.randrange(1, len(buffer))])
    if kind == "flip_header":
        start, stop = 128, min(2048, len(buffer))
    elif kind == "flip_pixels":
        start, stop = len(buffer) // 2, len(buffer)
    else:
        at = rng.randrange(0, len(buffer) - 512)
        buffer[at : at + 512] = bytes(512)
        return bytes(buffer)
    for _ in range(rng.randint(1, 40)):
        at = rng.randrange(start, stop)
        buffer[at] ^= 1 << rng.randrange(8)
    return bytes(buffer)


def live_workers(stack: Stack) -> set[str]:
    return {w["id"] for w in requests.get(stack.url("/readyz"), timeout=5).json()["workers"]}


def test_mutated_series_fail_cleanly_and_crash_no_worker(stack: Stack) -> None:
    rng = random.Random(20261125)
    before = live_workers(stack)
    mutated = 0
    folders = []
    for number in range(SERIES):
        folder = stack.settings.data_root / f"mutated-{number}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(SAMPLES / CHEST, folder)
        for path in sorted(folder.iterdir()):
            if rng.random() < 0.6:
                path.write_bytes(mutate(path.read_bytes(), rng))
                mutated += 1
        folders.append(folder)
    ids = []
    for folder in folders:
        response = requests.post(
            stack.url("/v1/jobs"),
            json={"model": "ct_classifier", "series_uid": folder.name},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["job_id"])
    outcomes: Counter[str] = Counter()
    limit = stack.settings.jobs.soft_time_limit
    for job_id in ids:
        job = wait_job(stack, job_id, timeout=120)
        outcomes[job["state"] + (":" + job["error"]["type"] if "error" in job else "")] += 1
        assert job["state"] in ("SUCCEEDED", "FAILED"), job
        if job["state"] == "FAILED":
            assert ".dcm" in job["error"]["message"] or "series" in job["error"]["message"], job
        took = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(
            job["started_at"]
        )
        assert took.total_seconds() < limit
    time.sleep(2 * stack.settings.worker.heartbeat_seconds)
    after = live_workers(stack)
    print(
        f"mutated files {mutated} in {SERIES} series; outcomes {dict(outcomes)}; "
        f"workers before {sorted(before)} after {sorted(after)}"
    )
    assert after == before, "a worker process was replaced: one crashed"
    assert mutated >= 100
    canary = requests.post(
        stack.url("/v1/jobs"),
        json={"model": "ct_classifier", "series_uid": "chest", "slices": {"stop": 2}},
        timeout=10,
    )
    assert wait_job(stack, canary.json()["job_id"])["state"] == "SUCCEEDED"
