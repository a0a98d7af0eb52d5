"""Series jobs under load: several demo-series jobs at once, slices/s end to end and model-side."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from flaskmodel.bench.inprocess import Limit
from flaskmodel.bench.report import Row
from flaskmodel.bench.wrk import Cell
from flaskmodel.client import Client
from flaskmodel.demo.build import DEMO_SERIES_UID

JOBS = 8


def run_series_bench(
    base: str, data_root: Path, limits: list[Limit], say: Callable[[str], None]
) -> list[Row]:
    """Two rows: slices/s end to end (decode included) and with decode excluded."""
    say(f"series jobs: {JOBS} jobs of the demo series at once")
    client = Client(base, timeout=60)

    def one(_: int) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        job = client.submit_series(DEMO_SERIES_UID, model="ct_classifier")
        view = client.wait(job["job_id"], timeout=600, poll=0.1)
        if view["state"] != "SUCCEEDED":
            raise RuntimeError(f"series job {view['state']}: {view.get('error')}")
        return time.perf_counter() - started, view["result"]

    started = time.perf_counter()
    with ThreadPoolExecutor(JOBS) as pool:
        done = list(pool.map(one, range(JOBS)))
    wall = time.perf_counter() - started
    latencies = np.array([seconds for seconds, _ in done]) * 1000
    slices = sum(len(result["slices"]) for _, result in done)
    decode = sum(result["timings"]["decode_seconds"] for _, result in done)
    inference = sum(result["timings"]["inference_seconds"] for _, result in done)
    limit = max(x.items_per_second for x in limits if x.model == "ct_classifier")

    def cell(seconds: float) -> Cell:
        return Cell(
            connections=JOBS, requests=JOBS, completed=slices, seconds=seconds,
            p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)),
            errors=0,
        )  # fmt: skip

    say(f"series: {slices / wall:.1f} slices/s, decode {decode:.2f}s, inference {inference:.2f}s")
    return [
        Row("series jobs, end to end", "ct_classifier", 1, cell(wall), limit, 0),
        Row("series jobs, model calls only", "ct_classifier", 1, cell(inference), limit, 0),
    ]
