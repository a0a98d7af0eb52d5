"""The benchmark's Markdown report: machine, commit, date, settings, one row per cell (each
FlaskModel protocol row also as a ratio to the naive baseline's cell), and issue 17's targets."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flaskmodel.bench.inprocess import Limit
from flaskmodel.bench.targets import (
    BASELINE,
    FLASKMODEL,
    KEYS,
    p50_ratio,
    targets,
    throughput_ratio,
)
from flaskmodel.bench.wrk import Cell


@dataclass
class Row:
    scenario: str
    model: str
    items_per_request: int
    cell: Cell
    limit: float | None  # in-process items/s this row is compared with
    errors: int  # transport errors plus unexpected answers
    stack: str = FLASKMODEL  # the server measured (``bench.targets``: FLASKMODEL, KEYS, BASELINE)

    @property
    def items_per_second(self) -> float:
        return self.cell.per_second * self.items_per_request


@dataclass
class Report:
    settings: dict[str, str]
    limits: list[Limit] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            "# FlaskModel benchmark report",
            "",
            f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"- commit: {commit()}",
            f"- machine: {cpu_model()}, {os.cpu_count()} cores, {memory_gib():.0f} GiB, "
            f"{platform.system()} {platform.release()}",
            f"- python {platform.python_version()}",
            "",
            "## Settings",
            "",
            *[f"- `{k}` = `{v}`" for k, v in sorted(self.settings.items())],
            "",
            "## In-process limit (the loaded signature called directly)",
            "",
            "| model | batch | items/s | ms per call |",
            "| --- | ---: | ---: | ---: |",
            *[
                f"| {x.model} | {x.batch} | {x.items_per_second:,.0f} | {x.ms_per_call:.2f} |"
                for x in self.limits
            ],
            "",
            "## Through the servers, driven by wrk",
            "",
            _SERVERS,
            "",
            "| server | scenario | model | connections | items/s | p50 ms | p99 ms | errors | "
            "requests | of in-process limit | × baseline | p50 × baseline |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in self.rows:
            cell = row.cell
            share = f"{row.items_per_second / row.limit:.0%}" if row.limit else "–"
            lines.append(
                f"| {row.stack} | {row.scenario} | {row.model} | {cell.connections} | "
                f"{row.items_per_second:,.1f} | {cell.p50_ms:.1f} | {cell.p99_ms:.1f} | "
                f"{row.errors} | {cell.requests} | {share} | "
                f"{_times(throughput_ratio(row, self.rows))} | "
                f"{_times(p50_ratio(row, self.rows))} |"
            )
        lines += [
            "",
            "## Targets (issue 17)",
            "",
            "Ratios to the naive Flask baseline (gunicorn, one sync worker a core, the models "
            "loaded in each, one request one signature call) measured in this run.",
            "",
            "| target | measured | met |",
            "| --- | --- | --- |",
            *[f"| {t.name} | {t.measured} | {_MET[t.met]} |" for t in targets(self.rows)],
        ]
        if self.notes:
            lines += ["", "## Notes", "", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"


_SERVERS = (
    f"{FLASKMODEL}: the stack (nginx → gunicorn → Redis → worker); {KEYS}: a second stack alike "
    "with one API key and a per-key rate limit that counts every request; "
    f"{BASELINE}: the naive baseline (gunicorn sync workers, no nginx). The cells of one model "
    "and connection count ran one right after another (baseline first), so a slow minute of the "
    "host hits them alike, in rounds (M1: of shorter cells; M2: of whole cells), each row its "
    "median round (its requests and latencies; errors: of every round). × baseline: items/s "
    "over the baseline's cell of the same model and connections (M1: its REST JSON cell; M2: "
    "its raw float32 body cell); p50 × baseline: the same at 1 connection, for p50 latency."
)
_MET = {True: "yes", False: "**no**", None: "–"}


def _times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, check=True
        )
        return out + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.is_file() else ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    path = Path("/proc/meminfo")
    text = path.read_text() if path.is_file() else ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0
