"""``flaskmodel bench``: in-process limits, then the real stack under wrk, then a report.

The stack is ``flaskmodel up`` in a subprocess (nginx, gunicorn, Redis, worker — exactly what
users run) with its own run directory under ``<out_dir>/run``; answers are checked against the
model before any load is applied.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flaskmodel.bench.fairness import run_fairness_bench
from flaskmodel.bench.inprocess import Limit, measure
from flaskmodel.bench.models import build_bench_models
from flaskmodel.bench.payloads import Scenario, answer, expected, job_body, scenarios
from flaskmodel.bench.report import Report, Row
from flaskmodel.bench.series import run_series_bench
from flaskmodel.bench.wrk import JOB_SCRIPT, JOB_WAIT_SCRIPT, POST_SCRIPT, run_wrk
from flaskmodel.deploy.processes import descendants
from flaskmodel.deploy.stack import free_port


@dataclass(frozen=True)
class Plan:
    """How much to measure: wrk connection counts, seconds per cell, seconds per limit."""

    connections: tuple[int, ...]
    seconds: float
    limit_seconds: float


FULL = Plan(connections=(1, 16, 64, 256), seconds=10.0, limit_seconds=3.0)
QUICK = Plan(connections=(1, 64), seconds=4.0, limit_seconds=1.0)


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
    say("measuring the in-process limit")
    limits = measure(models_root, "tiny", (1, 8, 32, 128), plan.limit_seconds)
    limits += measure(models_root, "ct", (1, 8), plan.limit_seconds)
    limits += measure(models_root, "ct_classifier", (1, 16), plan.limit_seconds)
    # Every run starts from an empty Redis: job records and AOF files left by an earlier run
    # would make this one rewrite and reload them.
    shutil.rmtree(out_dir / "run", ignore_errors=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")},
        "FLASKMODEL_MODELS_ROOT": str(models_root),
        "FLASKMODEL_DATA_ROOT": str(data_root),
        "FLASKMODEL_RUN_DIR": str(out_dir / "run"),
        "FLASKMODEL_LOG__LEVEL": "WARNING",
    }
    settings = {k: v for k, v in env.items() if k.startswith("FLASKMODEL_")}
    report = Report(
        settings={**settings, "web.port": str(port), "mode": "quick" if quick else "full"}
    )
    report.limits = limits
    say(f"starting the stack on port {port}")
    stack = subprocess.Popen(
        [sys.executable, "-m", "flaskmodel", "up", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, stack)
        _drive(base, models_root, work, plan, limits, report, say, stack.pid)
        report.rows += run_series_bench(base, data_root, limits, say)
        report.notes += run_fairness_bench(base, say)
        report.notes.append(_memory(stack.pid))
    finally:
        os.killpg(stack.pid, signal.SIGTERM)
        stack.wait(120)
    path = out_dir / "report.md"
    path.write_text(report.markdown())
    return path


def _wait_ready(base: str, stack: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            output = stack.stdout.read().decode(errors="replace") if stack.stdout else ""
            raise RuntimeError(f"flaskmodel up exited with {stack.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the stack did not become ready")


def _limit(limits: list[Limit], model: str) -> float:
    return max(x.items_per_second for x in limits if x.model == model)


def _drive(
    base: str,
    models_root: Path,
    work: Path,
    plan: Plan,
    limits: list[Limit],
    report: Report,
    say: Callable[[str], None],
    stack_pid: int,
) -> None:
    connections, seconds = plan.connections, plan.seconds
    before = _worker_rss(stack_pid)
    tiny_inferences = 0
    for scenario in scenarios(work):
        if scenario.model != "tiny" and tiny_inferences and before:
            report.notes.append(_soak_note(before, _worker_rss(stack_pid), tiny_inferences))
            before = {}
        _check(base, models_root, scenario)
        for count in connections if scenario.model == "tiny" else (1, 16, 64):
            say(f"{scenario.name} {scenario.model} at {count} connections")
            cell = run_wrk(
                base + scenario.path, script=POST_SCRIPT, body=scenario.body, connections=count,
                seconds=seconds, work_dir=work, content_type=scenario.content_type,
                header_length=scenario.header_length,
            )  # fmt: skip
            errors = cell.errors + cell.requests - cell.completed
            if scenario.model == "tiny":
                tiny_inferences += cell.completed * scenario.items
            report.rows.append(
                Row(
                    scenario.name,
                    scenario.model,
                    scenario.items,
                    cell,
                    _limit(limits, scenario.model),
                    errors,
                )
            )
    body = job_body(work)
    for name, script in (
        ("job submit → result", JOB_SCRIPT),
        ("job submit → result, one request", JOB_WAIT_SCRIPT),
    ):
        for count in (16, 64):
            say(f"{name}, tiny, {count} connections")
            cell = run_wrk(
                base + "/v1/jobs", script=script, body=body, connections=count,
                seconds=seconds, work_dir=work, one_thread_per_connection=True,
            )  # fmt: skip
            errors = (
                cell.errors + cell.requests - cell.completed
                if script is JOB_WAIT_SCRIPT
                else cell.errors
            )
            report.rows.append(Row(name, "tiny", 1, cell, None, errors))


def _check(base: str, models_root: Path, scenario: Scenario) -> None:
    got = answer(base, scenario)
    want = expected(models_root, scenario.model, scenario.items)
    if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{scenario.name} {scenario.model}: the answer differs from the model")


def _worker_rss(supervisor_pid: int) -> dict[int, int]:
    """RSS in KiB of each worker pool process (the processes that run models), by pid."""
    found = {}
    for pid in descendants(supervisor_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"flaskmodel\0worker" in cmd:
            found[pid] = next(
                (int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0
            )
    return found


def _soak_note(before: dict[int, int], after: dict[int, int], inferences: int) -> str:
    """How the worker's memory moved over the M1 scenarios (issue 5's soak target)."""
    same = sorted(set(before) & set(after))
    growth = [(after[p] - before[p]) / 1024 for p in same]
    shown = (
        ", ".join(f"{before[p] / 1024:.0f} → {after[p] / 1024:.0f} MiB" for p in same)
        or "worker processes restarted in between"
    )
    largest = max(growth, default=float("nan"))
    return (
        f"Worker RSS over {inferences:,} M1 inferences (every `tiny` scenario): {shown}; "
        f"largest growth {largest:.1f} MiB"
    )


def _memory(supervisor_pid: int) -> str:
    """RSS of every process of the stack, by command."""
    parts = []
    for pid in sorted(descendants(supervisor_pid)):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        except OSError:
            continue
        rss = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
        parts.append(f"{cmd.strip()} {rss / 1024:.0f} MiB")
    return "RSS after the run: " + "; ".join(parts)
