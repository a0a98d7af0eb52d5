"""Issue 17's ratios and targets, computed from hand-made cells (no server)."""

from __future__ import annotations

from flaskmodel.bench.payloads import BASELINE_JSON, BASELINE_RAW
from flaskmodel.bench.report import Report, Row
from flaskmodel.bench.targets import (
    BASELINE,
    FLASKMODEL,
    KEYS,
    REST,
    V2_BINARY,
    V2_JSON,
    Target,
    p50_ratio,
    targets,
    throughput_ratio,
)
from flaskmodel.bench.wrk import Cell


def row(
    stack: str,
    scenario: str,
    model: str,
    conns: int,
    per_second: float,
    p50: float = 1.0,
    p99: float = 10.0,
    errors: int = 0,
    limit: float | None = None,
) -> Row:
    cell = Cell(conns, int(per_second * 10), int(per_second * 10), 10.0, p50, p99, errors)
    return Row(scenario, model, 1, cell, limit, errors, stack)


def by_name(found: list[Target], start: str) -> Target:
    (match,) = [t for t in found if t.name.startswith(start)]
    return match


def test_a_protocol_row_is_a_ratio_to_the_baseline_cell_of_its_model_and_connections() -> None:
    rows = [
        row(BASELINE, BASELINE_JSON, "tiny", 1, 400, p50=2.0),
        row(BASELINE, BASELINE_JSON, "tiny", 64, 500),
        row(BASELINE, BASELINE_RAW, "ct", 64, 40),
        row(FLASKMODEL, REST, "tiny", 1, 300, p50=3.0),
        row(FLASKMODEL, REST, "tiny", 64, 1500),
        row(KEYS, V2_JSON, "tiny", 64, 1250),
        row(FLASKMODEL, V2_BINARY, "ct", 64, 50),
        row(FLASKMODEL, "job submit → result", "tiny", 64, 900),
    ]
    assert throughput_ratio(rows[4], rows) == 3.0
    assert throughput_ratio(rows[5], rows) == 2.5
    assert throughput_ratio(rows[6], rows) == 1.25  # M2: the raw-body baseline
    assert p50_ratio(rows[3], rows) == 1.5
    assert p50_ratio(rows[4], rows) is None  # latency ratios at 1 connection only
    assert throughput_ratio(rows[3], rows) == 0.75
    assert throughput_ratio(rows[0], rows) is None  # the baseline itself
    assert throughput_ratio(rows[7], rows) is None  # not a protocol cell


def test_targets_are_met_or_missed_on_the_issues_thresholds() -> None:
    rows = [
        row(BASELINE, BASELINE_JSON, "tiny", 1, 500, p50=2.0),
        row(BASELINE, BASELINE_JSON, "tiny", 64, 1000),
        row(FLASKMODEL, REST, "tiny", 1, 400, p50=4.0),  # exactly 2.0×: met
        row(FLASKMODEL, V2_JSON, "tiny", 1, 400, p50=4.2),  # 2.1×: missed
        row(FLASKMODEL, REST, "tiny", 64, 3000),
        row(KEYS, REST, "tiny", 64, 2700, p99=39.0),  # 2.7×, 0.9× keys-off: met
        row(FLASKMODEL, V2_JSON, "tiny", 64, 3000),
        row(KEYS, V2_JSON, "tiny", 64, 2600, p99=12.0),  # 0.87× keys-off: missed
        row(FLASKMODEL, V2_BINARY, "tiny", 64, 3000),
        row(KEYS, V2_BINARY, "tiny", 64, 3000, p99=41.0),  # p99 over 40 ms: missed
        row(BASELINE, BASELINE_RAW, "ct", 1, 40, p50=25.0),
        row(BASELINE, BASELINE_RAW, "ct", 16, 40),
        row(BASELINE, BASELINE_RAW, "ct", 64, 40),
        row(FLASKMODEL, V2_BINARY, "ct", 1, 35, p50=30.0),  # 1.2×: met
        row(FLASKMODEL, V2_BINARY, "ct", 16, 40),  # 1.0×: met
        row(FLASKMODEL, V2_BINARY, "ct", 64, 39),  # missed
        row(FLASKMODEL, REST, "ct", 16, 36),  # 0.9×: met
        row(FLASKMODEL, REST, "ct", 64, 38, errors=3),  # errors: missed
        row(FLASKMODEL, "JPEG 2000 series, one study", "ct_classifier", 1, 45, limit=50),
    ]
    found = targets(rows)
    assert by_name(found, f"M1 {REST}, API key").met is True
    assert by_name(found, f"M1 {REST}, API key").measured == "2.70×, p99 39.0 ms, 0 errors"
    assert by_name(found, f"M1 {V2_BINARY}, API key").met is False
    assert by_name(found, f"M1 {REST}, 64 connections: with").met is True
    assert by_name(found, f"M1 {V2_JSON}, 64 connections: with").met is False
    assert by_name(found, f"M1 {REST}, 1 connection").met is True
    assert by_name(found, f"M1 {V2_JSON}, 1 connection").met is False
    assert by_name(found, f"M1 {V2_BINARY}, 1 connection").met is None  # not measured
    assert by_name(found, f"M1 {V2_BINARY}, 1 connection").measured == "not measured"
    assert by_name(found, f"M2 {V2_BINARY}, 1 connection").met is True
    assert by_name(found, f"M2 {V2_BINARY}, 16 connections").met is True
    assert by_name(found, f"M2 {V2_BINARY}, 64 connections").met is False
    assert by_name(found, f"M2 {REST}, 16 connections").met is True
    assert by_name(found, f"M2 {REST}, 64 connections").met is False
    series = by_name(found, "JPEG 2000 series, one study")
    assert (series.met, series.measured) == (True, "90% (45.0 of 50.0 slices/s)")


def test_the_report_shows_ratios_and_the_targets_table() -> None:
    report = Report(settings={"mode": "quick"})
    report.rows = [
        row(BASELINE, BASELINE_JSON, "tiny", 1, 500, p50=2.0),
        row(FLASKMODEL, REST, "tiny", 1, 750, p50=3.0),
    ]
    text = report.markdown()
    assert (
        "| FlaskModel | TF Serving REST JSON | tiny | 1 | 750.0 | 3.0 | 10.0 | 0 | 7500 | – "
        "| 1.50× | 1.50× |" in text
    )
    assert "## Targets (issue 17)" in text
    assert (
        f"| M1 {REST}, 1 connection: p50 ≤ 2.0× baseline p50 | 1.50× (3.00 vs 2.00 ms) | yes |"
        in text
    )
