"""A job's id in every log record about it (web and worker, JSON lines); its stage timings."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.metrics.conftest import run_job, series_job, tensor_job

pytestmark = pytest.mark.e2e


def records(log: Path, job_id: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("job_id") == job_id:
                found.append(entry)
    return found


def test_job_id_is_in_web_and_worker_logs(observed_stack: Stack) -> None:
    job = run_job(observed_stack, tensor_job())
    job_id = str(job["job_id"])
    time.sleep(0.3)  # Celery logs "succeeded" after the result is written
    web = records(observed_stack.logs / "gunicorn.log", job_id)
    assert any("job submitted" in r["message"] for r in web), web
    worker = records(observed_stack.logs / "worker.log", job_id)
    loggers = {r["logger"] for r in worker}
    # Ours (started, finished) and Celery's (received, succeeded), all tagged.
    assert {"flaskmodel.worker.runner", "celery.worker.strategy", "celery.app.trace"} <= loggers
    assert any("started" in r["message"] for r in worker)
    assert any("SUCCEEDED" in r["message"] for r in worker)
    # Other jobs' records never carry this id.
    for entry in worker:
        assert job_id in entry["message"] or entry["logger"] != "flaskmodel.worker.runner"


def test_results_record_every_stage(observed_stack: Stack) -> None:
    tensor = run_job(observed_stack, tensor_job())["result"]
    assert isinstance(tensor, dict)
    assert set(tensor["timings"]) == {
        "queue_wait_seconds",
        "decode_seconds",
        "inference_seconds",
        "postprocess_seconds",
        "total_seconds",
    }
    series = run_job(observed_stack, series_job())
    result = series["result"]
    assert isinstance(result, dict)
    stages = result["timings"]
    assert set(stages) == {
        "queue_wait_seconds",
        "scan_seconds",
        "decode_seconds",
        "preprocess_seconds",
        "inference_seconds",
        "postprocess_seconds",
        "store_seconds",
        "total_seconds",
    }
    assert all(v >= 0 for v in stages.values())
    assert stages["inference_seconds"] > 0 and stages["decode_seconds"] > 0
    # The series job's decode threads tag their records too (the series scan logs one).
    logged = records(observed_stack.logs / "worker.log", str(series["job_id"]))
    assert any(r["logger"] == "flaskmodel.dicom.series" for r in logged)
