"""The front door keeps receiving while Redis is down and no worker runs, and nothing it received
is lost: the real ``flaskmodel dicom`` process, its own Redis (stopped and restarted), storescu
as the modality, then a real worker that runs the job once it is there."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from redis import RedisError

from flaskmodel.errors import SeriesNotFound
from flaskmodel.jobs.store import JobStore
from flaskmodel.schemas import JobState, ReceivedSeries
from flaskmodel.settings import Settings
from flaskmodel.storage.received_series import ReceivedSeriesStore
from flaskmodel.storage.redis import connect
from tests import procs
from tests.conftest import CHEST, SAMPLES

pytestmark = pytest.mark.reliability

FILES = sorted((SAMPLES / CHEST).glob("*.dcm"))
UID = str(pydicom.dcmread(FILES[0], stop_before_pixels=True).SeriesInstanceUID)


def mirrored(
    settings: Settings, ready: Callable[[ReceivedSeries], bool], timeout: float = 30
) -> ReceivedSeries:
    """The series' record in Redis once ``ready`` holds for it."""
    client = connect(settings)
    store = ReceivedSeriesStore(client, ttl=600)
    deadline = time.monotonic() + timeout
    seen: object = None
    try:
        while True:
            try:
                seen = store.get(UID)
                if ready(seen):
                    return seen
            except (SeriesNotFound, RedisError) as exc:  # not mirrored yet, Redis starting
                seen = exc
            assert time.monotonic() < deadline, seen
            time.sleep(0.3)
    finally:
        client.close()


def test_receiving_goes_on_through_a_redis_outage_and_the_job_runs_once_a_worker_is_up(
    tmp_path: Path, models_root: Path
) -> None:
    redis_dir = tmp_path / "redis"
    redis_proc, url = procs.start_redis(redis_dir, appendonly=True)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    settings = Settings(
        models_root=models_root,
        data_root=tmp_path / "data",
        run_dir=tmp_path,
        redis={"url": url},
        worker={"heartbeat_seconds": 1.0},
        dicom={"port": procs.free_port(), "http_port": procs.free_port(), "stable_seconds": 1},
    )
    dicom = procs.start_dicom(settings, tmp_path / "dicom.log")
    worker = None
    try:
        procs.stop(redis_proc)  # Redis goes away before the study arrives
        sent = subprocess.run(
            ["storescu", "-xv", "-aec", "FLASKMODEL", "127.0.0.1", str(settings.dicom.port)]
            + [str(path) for path in FILES],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr  # stored on disk, answered success
        assert len(list((settings.data_root / UID).glob("*.dcm"))) == len(FILES)
        time.sleep(2)  # stable meanwhile: the submit fails (no Redis) and is retried

        redis_proc, _ = procs.start_redis(redis_dir, port, appendonly=True)
        # Mirrored again; its submit now fails for want of a worker (no longer of Redis).
        waiting = mirrored(settings, lambda r: "worker" in (r.error or ""))
        assert (waiting.received, waiting.state, waiting.job_id) == (20, "RECEIVING", None)

        worker = procs.start_worker(settings, tmp_path / "worker.log")
        routed = mirrored(settings, lambda r: r.state == "ROUTED")
        jobs = JobStore(connect(settings), ttl=600)
        deadline = time.monotonic() + 60
        while (view := jobs.get(str(routed.job_id))).state not in (
            JobState.SUCCEEDED,
            JobState.FAILED,
        ):
            assert time.monotonic() < deadline, view
            time.sleep(0.3)
        assert view.state is JobState.SUCCEEDED, view.error
        assert view.progress.done == len(FILES) and len(routed.jobs) == 1
    finally:
        if worker is not None:
            procs.stop(worker)
        procs.stop(dicom)
        procs.stop(redis_proc)
