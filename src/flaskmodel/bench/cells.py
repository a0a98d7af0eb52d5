"""The wrk cells of ``flaskmodel bench``, interleaved across servers.

For each model and connection count the cells run one right after another: the naive Flask
baseline's, FlaskModel's three protocols, then (M1) the same three on the keys-on stack, so a
slow minute of the shared host hits every server alike and the ratios stay honest. M1's cells
run in ``Plan.rounds`` such rounds of shorter cells, M2's in as many rounds of full cells (an M2
answer takes up to ~2 s, so a short cell would hold too few); each server's row is its median
round (by items/s; its errors those of every round), so one noisy spell moves no ratio on its
own.
Every answer is checked against the model before any load is applied. Then the job round trips.

A server keeps working on what a cell left queued after wrk has closed its connections (a sync
worker's accept queue, FlaskModel's model queue), which would slow down the next cell, another
server's included; so after each cell one more request is sent to the same server and answered
(queued behind that work) before the next cell starts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flaskmodel.bench.inprocess import Limit
from flaskmodel.bench.memory import soak_note, worker_rss
from flaskmodel.bench.payloads import (
    Scenario,
    answer,
    baseline_scenarios,
    expected,
    job_body,
    post,
)
from flaskmodel.bench.payloads import scenarios as protocol_scenarios
from flaskmodel.bench.report import Report, Row
from flaskmodel.bench.stacks import Stack, check_keys
from flaskmodel.bench.targets import BASELINE, FLASKMODEL, KEYS
from flaskmodel.bench.wrk import JOB_SCRIPT, JOB_WAIT_SCRIPT, POST_SCRIPT, run_wrk


@dataclass(frozen=True)
class Plan:
    """How much to measure: wrk connection counts and seconds per cell (M1, M2; an M2 cell at 64
    connections answers each request after ~2 s, so it needs longer), seconds per limit, and
    the rounds every cell runs in (M1's seconds are split into them; each M2 round is a whole
    cell)."""

    connections: tuple[int, ...]
    ct_connections: tuple[int, ...]
    seconds: float
    ct_seconds: float
    limit_seconds: float
    rounds: int = 1


@dataclass(frozen=True)
class Servers:
    """What is measured: the stack, the keys-on stack and the naive baseline's base URL."""

    stack: Stack
    keys: Stack
    baseline: str


@dataclass(frozen=True)
class _Target:
    stack: str
    base: str
    headers: dict[str, str]
    scenario: Scenario


def drive(
    servers: Servers,
    models_root: Path,
    work: Path,
    plan: Plan,
    limits: list[Limit],
    report: Report,
    say: Callable[[str], None],
) -> None:
    """Every inference cell, interleaved by (model, connections), then the job round trips."""
    baselines = {s.model: s for s in baseline_scenarios(work)}
    for model, counts, seconds, rounds in schedule(plan):
        targets = [_Target(BASELINE, servers.baseline, {}, baselines[model])]
        targets += [
            _Target(FLASKMODEL, servers.stack.base, {}, s)
            for s in protocol_scenarios(work)
            if s.model == model
        ]
        if model == "tiny":
            check_keys(servers.keys, targets[1].scenario)
            keys = servers.keys
            targets += [_Target(KEYS, keys.base, keys.headers, t.scenario) for t in targets[1:4]]
        want = expected(models_root, model, targets[0].scenario.items)
        for target in targets:
            _check(target, want)
        before = worker_rss(servers.stack.process.pid)
        inferences = 0
        for count in counts:
            runs: list[list[Row]] = [[] for _ in targets]
            for _ in range(rounds):
                for target, rows in zip(targets, runs, strict=True):
                    rows.append(_cell(target, count, seconds, work, limits, say))
                    _drain(target, say)
            for target, rows in zip(targets, runs, strict=True):
                report.rows.append(_median(rows))
                if target.stack == FLASKMODEL:
                    inferences += sum(r.cell.completed * r.items_per_request for r in rows)
        if model == "tiny" and before:
            after = worker_rss(servers.stack.process.pid)
            report.notes.append(soak_note(before, after, inferences))
    _jobs(servers.stack.base, work, plan.seconds, report, say)


def schedule(plan: Plan) -> list[tuple[str, tuple[int, ...], float, int]]:
    """Per model: its connection counts, seconds per round and rounds."""
    return [
        ("tiny", plan.connections, math.ceil(plan.seconds / plan.rounds), plan.rounds),
        ("ct", plan.ct_connections, plan.ct_seconds, plan.rounds),
    ]


def _cell(
    target: _Target,
    connections: int,
    seconds: float,
    work: Path,
    limits: list[Limit],
    say: Callable[[str], None],
) -> Row:
    scenario = target.scenario
    server = "" if target.stack == BASELINE else f"{target.stack}: "
    say(f"{server}{scenario.name} {scenario.model} at {connections} connections")
    cell = run_wrk(
        target.base + scenario.path, script=POST_SCRIPT, body=scenario.body,
        connections=connections, seconds=seconds, work_dir=work,
        content_type=scenario.content_type, header_length=scenario.header_length,
        headers=target.headers,
    )  # fmt: skip
    errors = cell.errors + cell.requests - cell.completed
    limit = max(x.items_per_second for x in limits if x.model == scenario.model)
    return Row(scenario.name, scenario.model, scenario.items, cell, limit, errors, target.stack)


def _median(rows: list[Row]) -> Row:
    """The round with the median items/s (the lower middle one of an even count), with the
    errors of every round."""
    middle = sorted(rows, key=lambda row: row.items_per_second)[(len(rows) - 1) // 2]
    return dataclasses.replace(middle, errors=sum(row.errors for row in rows))


def _drain(target: _Target, say: Callable[[str], None], timeout: float = 600) -> None:
    """Return once the server has answered one more request, queued behind the cell's leftovers."""
    started = time.monotonic()
    try:
        status, _, _ = post(target.base, target.scenario, target.headers, timeout)
    except OSError as exc:
        say(f"  draining {target.stack} failed: {exc}")
        return
    waited = time.monotonic() - started
    if status != 200 or waited > 1:
        say(f"  {target.stack} drained in {waited:.1f} s (HTTP {status})")


def _check(target: _Target, want: np.ndarray) -> None:
    """The server's answer to the target's scenario equals the model's own (``want``)."""
    scenario = target.scenario
    got = answer(target.base, scenario, target.headers)
    if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise RuntimeError(
            f"{target.stack}: {scenario.name} {scenario.model}: the answer differs from the model"
        )


def _jobs(
    base: str, work: Path, seconds: float, report: Report, say: Callable[[str], None]
) -> None:
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
