"""The CLI against the real stack: submit --wait prints progress and the per-slice table."""

from __future__ import annotations

from click.testing import CliRunner

from flaskmodel.cli import main
from flaskmodel.demo.build import DEMO_SERIES_UID
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


def test_jobs_lists_the_newest_first(stack: Stack) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["submit", DEMO_SERIES_UID, "--stop", "2", "--url", stack.base_url])
    second = runner.invoke(
        main, ["submit", DEMO_SERIES_UID, "--stop", "3", "--url", stack.base_url]
    )
    listing = runner.invoke(main, ["jobs", "--limit", "5", "--url", stack.base_url])
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[0].startswith("job")
    ids = [line.split()[0] for line in lines[1:]]
    assert ids[:2] == [second.output.strip(), first.output.strip()]
    assert all("series" in line for line in lines[1:3])
