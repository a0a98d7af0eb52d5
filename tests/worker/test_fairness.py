"""Fairness and priority across series jobs, through the real worker, gunicorn and Redis.

A fake model with a fixed cost per batch keeps the timing deterministic enough: a small series
job submitted while a large one runs must finish within twice its idle time plus one batch
(its chunks interleave with the large job's), and at priority 1 beside a priority-10 job within
about its idle time plus the batch already running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flaskmodel.bench.fairness import measure_fairness
from flaskmodel.client import Client
from flaskmodel.demo.build import write_demo_series
from flaskmodel.settings import Settings
from tests import procs
from tests.conftest import write_fake_model

IMAGE_SPEC = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 32, 32, 1]}],
    "outputs": [{"name": "scores", "dtype": "float32", "shape": [None, 4]}],
}
BATCH = 4
BIG, SMALL = 160, 12
BIG_UID, SMALL_UID = "2.25.8001", "2.25.8002"


@pytest.fixture
def fair_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    models = tmp_path / "models"
    write_fake_model(models, "paced", 1, {**IMAGE_SPEC, "delay_ms": 100})
    (models / "paced" / "flaskmodel.json").write_text(
        json.dumps({"batch_size": BATCH, "max_batch_delay_ms": 0})
    )
    write_demo_series(tmp_path / "data", n_slices=BIG, size=32, series_uid=BIG_UID)
    write_demo_series(tmp_path / "data", n_slices=SMALL, size=32, series_uid=SMALL_UID)
    return make_settings(
        models_root=models,
        runtime={"backend": "fake"},
        worker={"queue": f"fair-{time.monotonic_ns()}"},
        series={"chunk_batches": 1, "thumbnails": False},
    )


def test_small_job_is_not_starved_and_priority_orders_work(
    fair_settings: Settings, tmp_path: Path
) -> None:
    worker = procs.start_worker(fair_settings, tmp_path / "worker.log")
    port = procs.free_port()
    web = procs.start_gunicorn(fair_settings, tmp_path / "gunicorn.log", port)
    try:
        figure = measure_fairness(
            Client(f"http://127.0.0.1:{port}"),
            model="paced",
            big={"series_uid": BIG_UID},
            small={"series_uid": SMALL_UID},
            small_batches=SMALL // BATCH,
            big_slices=BIG,
        )
    finally:
        procs.stop(web)
        procs.stop(worker)
    print("\n".join(figure.lines()))
    # Each chunk costs at least its 100 ms batch: the small job alone is three of them.
    assert figure.idle_seconds >= 0.3
    # Without chunking it would wait for the whole large job (40 batches, over 4 s).
    assert figure.met, figure.lines()
    assert figure.priority_seconds <= figure.idle_seconds + 2 * figure.batch_seconds, figure.lines()
