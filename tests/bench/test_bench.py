"""The benchmark's own arithmetic (the benchmark itself runs with `make bench`, not in tests)."""

from __future__ import annotations

import os
import subprocess

import pytest

from flaskmodel.bench.cells import _median, schedule
from flaskmodel.bench.memory import soak_note
from flaskmodel.bench.report import Row
from flaskmodel.bench.run import FULL, QUICK, _policy
from flaskmodel.bench.wrk import Cell


def _round(per_second: float, errors: int, p99_ms: float) -> Row:
    cell = Cell(64, int(per_second), int(per_second), 1.0, 10.0, p99_ms, errors)
    return Row("V2 binary", "tiny", 1, cell, None, errors)


def test_a_cell_of_rounds_is_its_median_round_with_every_rounds_errors() -> None:
    rounds = [_round(3000, 0, 20.0), _round(1000, 2, 90.0), _round(2000, 1, 30.0)]
    row = _median(rounds)
    assert (row.items_per_second, row.cell.p99_ms, row.errors) == (2000, 30.0, 3)
    # An even count: the lower of the two middle rounds, never a figure no round measured.
    assert _median(rounds[:2]).items_per_second == 1000


def test_every_model_runs_in_the_plans_rounds() -> None:
    for plan in (FULL, QUICK):
        (_, _, m1_seconds, m1_rounds), (_, _, m2_seconds, m2_rounds) = schedule(plan)
        assert m1_rounds == m2_rounds == plan.rounds > 1
        assert m1_seconds * m1_rounds >= plan.seconds  # M1's cell split into its rounds
        assert m2_seconds == plan.ct_seconds  # each M2 round a whole cell


def test_soak_note_reports_each_worker_and_the_largest_growth() -> None:
    note = soak_note({10: 800 * 1024, 11: 90 * 1024}, {10: 812 * 1024, 11: 91 * 1024}, 20_000)
    assert "20,000 M1 inferences" in note
    assert "800 → 812 MiB" in note
    assert "largest growth 12.0 MiB" in note


def test_soak_note_says_when_the_workers_were_replaced() -> None:
    note = soak_note({10: 1024}, {12: 2048}, 5)
    assert "restarted in between" in note


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux's scheduling policies")
def test_the_report_names_each_servers_cpu_policy() -> None:
    child = subprocess.Popen(["sleep", "30"], preexec_fn=_batch)  # noqa: PLW1509 - no threads
    try:
        assert _policy(os.getpid()) == "SCHED_OTHER"
        assert _policy(child.pid) == "SCHED_BATCH"
    finally:
        child.kill()
        child.wait()


def _batch() -> None:
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
