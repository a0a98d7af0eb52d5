"""The benchmark's Markdown report: machine, commit, date, settings, and one row per cell."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flaskmodel.bench.inprocess import Limit
from flaskmodel.bench.wrk import Cell


@dataclass
class Row:
    scenario: str
    model: str
    items_per_request: int
    cell: Cell
    limit: float | None  # in-process items/s this row is compared with
    errors: int  # transport errors plus unexpected answers

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
            "## Through the stack (nginx → gunicorn → Redis → worker), driven by wrk",
            "",
            "| scenario | model | connections | items/s | p50 ms | p99 ms | errors | "
            "requests | of in-process limit |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in self.rows:
            cell = row.cell
            share = f"{row.items_per_second / row.limit:.0%}" if row.limit else "–"
            lines.append(
                f"| {row.scenario} | {row.model} | {cell.connections} | "
                f"{row.items_per_second:,.1f} | {cell.p50_ms:.1f} | {cell.p99_ms:.1f} | "
                f"{row.errors} | "
                f"{cell.requests} | {share} |"
            )
        if self.notes:
            lines += ["", "## Notes", "", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"


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
