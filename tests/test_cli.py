"""The CLI against the real stack: submit --wait prints progress and the per-slice table."""

from __future__ import annotations

from click.testing import CliRunner

from flaskmodel.cli import main
from flaskmodel.demo import DEMO_SERIES_UID
from tests.conftest import Stack


def test_submit_wait_prints_the_slice_table(stack: Stack) -> None:
    result = CliRunner().invoke(
        main,
        [
            "submit",
            DEMO_SERIES_UID,
            "--start",
            "3",
            "--stop",
            "9",
            "--wait",
            "--url",
            stack.base_url,
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines[0]) == 32  # the job id first
    assert "direction feet-first" in result.output
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("index"))
    rows = lines[header + 1 :]
    assert [int(r.split()[0]) for r in rows] == list(range(3, 9))


def test_submit_reports_server_errors(stack: Stack) -> None:
    result = CliRunner().invoke(main, ["submit", "..", "--url", stack.base_url])
    assert result.exit_code == 1
    assert "series_uid" in result.output


def test_submit_without_a_server() -> None:
    result = CliRunner().invoke(main, ["submit", "x", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot reach" in result.output
