"""Issue 17's targets, stated as ratios to the naive Flask baseline measured in the same run.

Every FlaskModel row of a protocol scenario is compared with the baseline cell of the same model
and connection count: M1 ``tiny`` with the baseline's TF Serving REST JSON cell, M2 ``ct`` (each
of its protocols) with the baseline's raw float32 body cell. ``targets`` turns the rows into the
report's table: each target, what was measured, met or not (``None``: not measured this run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flaskmodel.bench.payloads import BASELINE_SCENARIO

if TYPE_CHECKING:
    from flaskmodel.bench.report import Row

#: ``Row.stack``: which server a row measured.
FLASKMODEL = "FlaskModel"
KEYS = "FlaskModel, API key + rate limit"
BASELINE = "naive Flask"

REST, V2_JSON, V2_BINARY = "TF Serving REST JSON", "V2 JSON", "V2 binary"
PROTOCOLS = (REST, V2_JSON, V2_BINARY)
SERIES = "JPEG 2000 series"


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool | None  # None: not measured in this run


def find(rows: Sequence[Row], stack: str, scenario: str, model: str, conns: int) -> Row | None:
    """The row of that server, scenario, model and connection count (the first one)."""
    for row in rows:
        key = (row.stack, row.scenario, row.model, row.cell.connections)
        if key == (stack, scenario, model, conns):
            return row
    return None


def baseline_of(row: Row, rows: Sequence[Row]) -> Row | None:
    """The baseline cell a FlaskModel protocol row is compared with (None: it has none)."""
    if row.stack == BASELINE or row.scenario not in PROTOCOLS or row.model not in BASELINE_SCENARIO:
        return None
    return find(rows, BASELINE, BASELINE_SCENARIO[row.model], row.model, row.cell.connections)


def throughput_ratio(row: Row, rows: Sequence[Row]) -> float | None:
    """The row's items/s over its baseline's."""
    base = baseline_of(row, rows)
    if base is None or not base.items_per_second:
        return None
    return row.items_per_second / base.items_per_second


def p50_ratio(row: Row, rows: Sequence[Row]) -> float | None:
    """The row's p50 latency over its baseline's, at one connection only (latency, not load)."""
    base = baseline_of(row, rows)
    if base is None or row.cell.connections != 1 or not base.cell.p50_ms:
        return None
    return row.cell.p50_ms / base.cell.p50_ms


def targets(rows: Sequence[Row]) -> list[Target]:
    """Every target of issue 17, in the order the issue states them."""
    out = []
    for protocol in PROTOCOLS:
        out.append(_keys_throughput(rows, protocol))
    for protocol in PROTOCOLS:
        out.append(_keys_cost(rows, protocol))
    for protocol in PROTOCOLS:
        out.append(_latency(rows, "M1", "tiny", protocol, 2.0))
    out.append(_latency(rows, "M2", "ct", V2_BINARY, 1.3))
    for protocol, floor in ((V2_BINARY, 1.0), (REST, 0.9)):
        for conns in (16, 64):
            out.append(_throughput(rows, protocol, conns, floor))
    out += _series(rows)
    return out


def _keys_throughput(rows: Sequence[Row], protocol: str) -> Target:
    name = (
        f"M1 {protocol}, API key + rate limit, 64 connections: ≥ 2.5× baseline, "
        "p99 ≤ 40 ms, 0 errors"
    )
    row = find(rows, KEYS, protocol, "tiny", 64)
    ratio = None if row is None else throughput_ratio(row, rows)
    if row is None or ratio is None:
        return Target(name, "not measured", None)
    met = ratio >= 2.5 and row.cell.p99_ms <= 40 and row.errors == 0
    return Target(name, f"{ratio:.2f}×, p99 {row.cell.p99_ms:.1f} ms, {row.errors} errors", met)


def _keys_cost(rows: Sequence[Row], protocol: str) -> Target:
    name = f"M1 {protocol}, 64 connections: with API key + rate limit ≥ 0.9× without"
    on, off = (find(rows, stack, protocol, "tiny", 64) for stack in (KEYS, FLASKMODEL))
    if on is None or off is None or not off.items_per_second:
        return Target(name, "not measured", None)
    ratio = on.items_per_second / off.items_per_second
    measured = f"{ratio:.2f}× ({on.items_per_second:,.0f} vs {off.items_per_second:,.0f} items/s)"
    return Target(name, measured, ratio >= 0.9)


def _latency(rows: Sequence[Row], label: str, model: str, protocol: str, ceiling: float) -> Target:
    name = f"{label} {protocol}, 1 connection: p50 ≤ {ceiling:.1f}× baseline p50"
    row = find(rows, FLASKMODEL, protocol, model, 1)
    ratio = None if row is None else p50_ratio(row, rows)
    base = None if row is None else baseline_of(row, rows)
    if row is None or ratio is None or base is None:
        return Target(name, "not measured", None)
    measured = f"{ratio:.2f}× ({row.cell.p50_ms:.2f} vs {base.cell.p50_ms:.2f} ms)"
    return Target(name, measured, ratio <= ceiling)


def _throughput(rows: Sequence[Row], protocol: str, conns: int, floor: float) -> Target:
    name = f"M2 {protocol}, {conns} connections: ≥ {floor:.1f}× raw-body baseline"
    row = find(rows, FLASKMODEL, protocol, "ct", conns)
    ratio = None if row is None else throughput_ratio(row, rows)
    if row is None or ratio is None:
        return Target(name, "not measured", None)
    measured = f"{ratio:.2f}×, {row.errors} errors"
    return Target(name, measured, ratio >= floor and row.errors == 0)


def _series(rows: Sequence[Row]) -> list[Target]:
    """The series scenario's rows that carry a limit: end to end ≥ 80 % of it."""
    out = []
    for row in rows:
        if row.scenario.startswith(SERIES) and row.limit:
            share = row.items_per_second / row.limit
            out.append(
                Target(
                    f"{row.scenario}: ≥ 80 % of the decode + model limit",
                    f"{share:.0%} ({row.items_per_second:,.1f} of {row.limit:,.1f} slices/s)",
                    share >= 0.8,
                )
            )
    return out
