"""``flaskmodel bench``: in-process limits, then the servers under wrk, then a report.

Three servers run side by side on the same models: the stack (``flaskmodel up`` in a
subprocess: nginx, gunicorn, Redis, worker — exactly what users run), a second stack alike with
an API key and a per-key rate limit (``bench.stacks``), and the naive Flask baseline
(``bench.baseline``). Answers are checked against the model before any load is applied; the
cells are interleaved (``bench.cells``) and every FlaskModel cell is reported as a ratio to the
baseline's of the same run, with issue 17's targets (``bench.targets``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from flaskmodel.bench.baseline import start_baseline
from flaskmodel.bench.cells import Plan, Servers, drive
from flaskmodel.bench.decode_limit import Ceiling
from flaskmodel.bench.fairness import run_fairness_bench
from flaskmodel.bench.inprocess import Limit, measure
from flaskmodel.bench.j2k_series import build_j2k_series, measure_j2k_ceiling, run_j2k_series_bench
from flaskmodel.bench.memory import memory
from flaskmodel.bench.models import build_bench_models
from flaskmodel.bench.report import Report
from flaskmodel.bench.series import run_series_bench
from flaskmodel.bench.stacks import Stack, start_stack

FULL = Plan(
    connections=(1, 16, 64, 256),
    ct_connections=(1, 16, 64),
    seconds=12.0,
    ct_seconds=10.0,
    limit_seconds=3.0,
    rounds=3,
)
QUICK = Plan(
    connections=(1, 64),
    ct_connections=(1, 16, 64),
    seconds=4.0,
    ct_seconds=8.0,
    limit_seconds=1.0,
    rounds=2,
)


def run_bench(out_dir: Path, *, quick: bool, say: Callable[[str], None]) -> Path:
    """Run everything; returns the report's path."""
    plan = QUICK if quick else FULL
    out_dir = out_dir.resolve()
    models_root = out_dir / "models"
    data_root = out_dir / "data"
    work = out_dir / "payloads"
    for folder in (models_root, data_root, work):
        folder.mkdir(parents=True, exist_ok=True)
    for line in build_bench_models(models_root, data_root):
        say(line)
    say(build_j2k_series(data_root))
    say("measuring the in-process limit")
    limits = measure(models_root, "tiny", (1, 8, 32, 128), plan.limit_seconds)
    limits += measure(models_root, "ct", (1, 8), plan.limit_seconds)
    limits += measure(models_root, "ct_classifier", (1, 16), plan.limit_seconds)
    ceiling = measure_j2k_ceiling(models_root, data_root, limits)
    report = Report(settings={"mode": "quick" if quick else "full"}, limits=limits)
    stacks: list[Stack] = []
    failed: Exception | None = None
    try:
        stack = start_stack(out_dir / "run", models_root, data_root)
        stacks.append(stack)
        keys = start_stack(out_dir / "run-keys", models_root, data_root, keys=True)
        stacks.append(keys)
        report.settings |= _settings(stack, keys)
        say(f"starting the stack at {stack.base} and the keys-on stack at {keys.base}")
        baseline = start_baseline(models_root, work)
        try:
            say(f"naive Flask baseline at {baseline.base} ({baseline.workers} sync workers)")
            report.settings["baseline"] = (
                f"gunicorn, {baseline.workers} sync workers, {baseline.base}"
            )
            stack.wait_ready()
            keys.wait_ready()
            report.settings["CPU policy"] = (  # as each server runs it, once ready
                f"stacks {_policy(stack.process.pid)}, baseline {_policy(baseline.process.pid)}"
            )
            drive(Servers(stack, keys, baseline.base), models_root, work, plan, limits, report, say)
        finally:
            baseline.stop()
        keys.stop()
        failed = _series(stack, data_root, limits, ceiling, report, say)
        report.notes.append(memory(stack.process.pid))
    finally:
        for running in reversed(stacks):
            running.stop()
    path = out_dir / "report.md"
    path.write_text(report.markdown())
    if failed is not None:
        raise RuntimeError(f"the benchmark failed (the report of the rest: {path})") from failed
    return path


def _series(
    stack: Stack,
    data_root: Path,
    limits: list[Limit],
    ceiling: Ceiling,
    report: Report,
    say: Callable[[str], None],
) -> Exception | None:
    """The series, JPEG 2000 series and fairness scenarios into ``report``; their failure."""
    try:
        report.rows += run_series_bench(stack.base, data_root, limits, say)
        rows, notes = run_j2k_series_bench(stack.base, ceiling, say)
        report.rows += rows
        report.notes += notes
        report.notes += run_fairness_bench(stack.base, say)
    except Exception as exc:  # noqa: BLE001 - reported, then raised once the report is out
        report.notes.append(f"**The series and fairness scenarios failed**: {exc!r}")
        return exc
    return None


def _settings(stack: Stack, keys: Stack) -> dict[str, str]:
    """The stack's settings, and the keys-on stack's where they differ."""
    differ = {
        f"keys-on stack: {k}": v for k, v in keys.settings.items() if stack.settings.get(k) != v
    }
    return {**stack.settings, **differ}


def _policy(pid: int) -> str:
    """The CPU scheduling policy a process runs under (the stack's is ``cpu_policy``)."""
    if not hasattr(os, "sched_getscheduler"):
        return "unknown"
    number = os.sched_getscheduler(pid)
    names = ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")
    return next((n for n in names if getattr(os, n, None) == number), str(number))
