"""Fairness figure: how long a small series job takes while a large one runs.

Series jobs run in chunks that go to the back of their model's queue, so a small job submitted
after a large one interleaves with it instead of waiting for it. The target (issue 8): the small
job completes within twice its time on an idle system plus one batch. A second measurement
gives the small job priority 1 against a large job at priority 10: it should then take about its
idle time plus the batch already running.

Times are the server's own (``finished_at - created_at`` of the job record), so polling adds
nothing to them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flaskmodel.client import Client

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FairnessFigure:
    """Completion times of the small job (seconds) and what one batch costs."""

    small_batches: int
    big_slices: int
    idle_seconds: float
    loaded_seconds: float
    priority_seconds: float

    @property
    def batch_seconds(self) -> float:
        return self.idle_seconds / self.small_batches

    @property
    def target_seconds(self) -> float:
        """Twice the idle time plus one batch."""
        return 2 * self.idle_seconds + self.batch_seconds

    @property
    def met(self) -> bool:
        return self.loaded_seconds <= self.target_seconds

    def lines(self) -> list[str]:
        return [
            f"fairness: a {self.small_batches}-batch series job took {self.idle_seconds:.2f}s "
            f"alone and {self.loaded_seconds:.2f}s beside a {self.big_slices}-slice job "
            f"({self.loaded_seconds / self.idle_seconds:.2f}x idle; target <= 2x idle + one batch "
            f"= {self.target_seconds:.2f}s: {'met' if self.met else 'MISSED'})",
            f"priority: at priority 1 beside a priority-10 job it took "
            f"{self.priority_seconds:.2f}s ({self.priority_seconds / self.idle_seconds:.2f}x idle)",
        ]


def measure_fairness(
    client: Client,
    *,
    model: str,
    big: dict[str, Any],
    small: dict[str, Any],
    small_batches: int,
    big_slices: int,
    say: Callable[[str], None] = logger.info,
    timeout: float = 120,
) -> FairnessFigure:
    """Run the small job alone, beside the big job, then at priority 1 beside it at 10.

    ``big`` and ``small`` are series job payload parts (``series_uid``, ``slices``?); the big
    job is cancelled once the small one has finished.
    """
    idle = _completion(client, {"model": model, **small}, timeout)
    say(f"fairness: small job alone {idle:.2f}s")
    loaded = _beside(client, {"model": model, **big}, {"model": model, **small}, timeout)
    say(f"fairness: small job beside the big one {loaded:.2f}s")
    ranked = _beside(
        client,
        {"model": model, **big, "priority": 10},
        {"model": model, **small, "priority": 1},
        timeout,
    )
    say(f"fairness: small job at priority 1 {ranked:.2f}s")
    return FairnessFigure(small_batches, big_slices, idle, loaded, ranked)


def _beside(client: Client, big: dict[str, Any], small: dict[str, Any], timeout: float) -> float:
    """The small job's completion time, submitted once the big job is under way."""
    job = client.submit(big)["job_id"]
    try:
        deadline = time.monotonic() + timeout
        while client.job(job)["progress"]["done"] == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the big series job did not start")
            time.sleep(0.02)
        return _completion(client, small, timeout)
    finally:
        if client.job(job)["state"] in ("QUEUED", "RUNNING"):
            client.cancel(job)


def _completion(client: Client, payload: dict[str, Any], timeout: float) -> float:
    job = client.submit(payload)["job_id"]
    view = client.wait(job, timeout=timeout, poll=0.02)
    if view["state"] != "SUCCEEDED":
        raise RuntimeError(f"series job {view['state']}: {view.get('error')}")
    finished = datetime.fromisoformat(view["finished_at"])
    return (finished - datetime.fromisoformat(view["created_at"])).total_seconds()


def run_fairness_bench(base: str, say: Callable[[str], None]) -> list[str]:
    """The fairness figure on the bench stack: the demo series (40 slices) beside the large
    fairness series, both through ``ct_classifier``; report lines."""
    from flaskmodel.bench.models import (  # noqa: PLC0415 - the bench's own data
        FAIRNESS_SERIES_UID,
        FAIRNESS_SLICES,
    )
    from flaskmodel.demo.build import DEMO_SERIES_SLICES, DEMO_SERIES_UID  # noqa: PLC0415

    say(f"fairness: the demo series beside a {FAIRNESS_SLICES}-slice series job")
    figure = measure_fairness(
        Client(base, timeout=60),
        model="ct_classifier",
        big={"series_uid": FAIRNESS_SERIES_UID},
        small={"series_uid": DEMO_SERIES_UID},
        small_batches=-(-DEMO_SERIES_SLICES // 16),  # the demo model's batches of 16
        big_slices=FAIRNESS_SLICES,
        say=say,
    )
    for line in figure.lines():
        say(line)
    return figure.lines()
