"""The CLI against the real stack: submit --wait prints progress and the per-slice table; tensor
jobs from .npy and JSON files; cancel, show, jobs and --json (the API's answers as they are);
--version and the command summaries of --help."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner, Result

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


# --- the conventions: --version, full summaries, tensor jobs, cancel, show, --json --------------

TINY_ROW = [0.1] * 32


def _stdout_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_version_is_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"flaskmodel {version('flaskmodel')}\n"


def test_help_shows_every_command_summary_in_full() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:", 1)[1]
    assert "..." not in listed
    for name, command in main.commands.items():
        summary = command.get_short_help_str(45)  # click's default width, a narrow terminal
        assert not summary.endswith("..."), (name, summary)
        assert summary.endswith("."), (name, summary)
        assert f"{name}  " in listed and summary in " ".join(listed.split()), (name, summary)


def test_submit_tensor_rows_from_npy_and_wait_prints_the_predictions(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "rows.npy"
    np.save(path, np.full((3, 32), 0.1, dtype=np.float32))
    result = CliRunner().invoke(
        main,
        ["submit", "--inputs", str(path), "--model", "tiny", "--wait", "--url", stack.base_url],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines[0]) == 32  # the job id first
    assert lines[1] == "model tiny v1"
    assert lines[2].split() == ["index", "prediction"]
    rows = lines[3:]
    assert [int(row.split()[0]) for row in rows] == [0, 1, 2]
    scores = json.loads(rows[0].split(None, 1)[1])
    assert len(scores) == 10 and abs(sum(scores) - 1) < 0.01


def test_submit_tensor_from_json_forms_and_print_the_api_answers(
    stack: Stack, tmp_path: Path
) -> None:
    runner = CliRunner()
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"instances": [TINY_ROW, TINY_ROW]}))
    args = ["--model", "tiny", "--url", stack.base_url, "--json"]
    finished = _stdout_json(
        runner.invoke(main, ["submit", "--inputs", str(instances), "--wait", *args])
    )
    assert finished["state"] == "SUCCEEDED" and finished["kind"] == "tensor"
    assert len(finished["result"]["predictions"]) == 2

    bare = tmp_path / "rows.json"
    bare.write_text(json.dumps([TINY_ROW]))
    submitted = _stdout_json(runner.invoke(main, ["submit", "--inputs", str(bare), *args]))
    assert set(submitted) >= {"job_id", "state", "status_url"}
    shown = _stdout_json(runner.invoke(main, ["show", submitted["job_id"], "--wait", *args[2:]]))
    assert shown["job_id"] == submitted["job_id"] and shown["state"] == "SUCCEEDED"

    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({"inputs": {"x": [TINY_ROW]}}))
    table = runner.invoke(main, ["submit", "--inputs", str(columns), "--wait", *args[:-1]])
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[2].split() == ["output", "values"]
    # Columns with a single output come back bare (TensorFlow Serving's convention).
    assert table.stdout.splitlines()[3].startswith("output  [[0.")


def test_submit_refuses_what_is_not_one_job(stack: Stack, tmp_path: Path) -> None:
    runner = CliRunner()
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([TINY_ROW]))
    url = ["--url", stack.base_url]
    no_model = runner.invoke(main, ["submit", "--inputs", str(rows), *url])
    assert no_model.exit_code == 2 and "--model" in no_model.output
    both = runner.invoke(
        main, ["submit", DEMO_SERIES_UID, "--inputs", str(rows), "--model", "tiny", *url]
    )
    assert both.exit_code == 2
    neither = runner.invoke(main, ["submit", *url])
    assert neither.exit_code == 2 and "SERIES_UID" in neither.output
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"rows": [TINY_ROW]}))
    refused = runner.invoke(main, ["submit", "--inputs", str(odd), "--model", "tiny", *url])
    assert refused.exit_code == 1 and '{"instances": [...]}' in refused.output
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((1, 32), np.nan, dtype=np.float32))
    refused = runner.invoke(main, ["submit", "--inputs", str(nan), "--model", "tiny", *url])
    assert refused.exit_code == 1 and "NaN" in refused.output
    wrong = runner.invoke(main, ["submit", "--inputs", str(rows), "--model", "ct_classifier", *url])
    assert wrong.exit_code == 1  # the server's check of the inputs against the signature
    assert "input 'image' must have 4 dimensions" in wrong.output


def test_jobs_json_is_the_api_answer(stack: Stack) -> None:
    runner = CliRunner()
    submitted = runner.invoke(
        main, ["submit", DEMO_SERIES_UID, "--stop", "2", "--url", stack.base_url]
    )
    assert submitted.exit_code == 0, submitted.output
    listing = _stdout_json(
        runner.invoke(main, ["jobs", "--limit", "3", "--json", "--url", stack.base_url])
    )
    assert set(listing) == {"jobs"}
    assert listing["jobs"][0]["job_id"] == submitted.stdout.strip()
    assert len(listing["jobs"]) <= 3


def test_cancel_a_queued_job_then_a_finished_one(fake_stack: Stack, tmp_path: Path) -> None:
    runner = CliRunner()
    rows = tmp_path / "rows.npy"
    np.save(rows, np.ones((1, 4), dtype=np.float32))
    args = ["--model", "slow", "--url", fake_stack.base_url]
    # Each call of ``slow`` takes 400 ms and its worker runs one at a time: the last of three
    # is still waiting (or running) when the cancel arrives.
    ids = [
        runner.invoke(main, ["submit", "--inputs", str(rows), *args]).stdout.strip()
        for _ in range(3)
    ]
    cancelled = runner.invoke(main, ["cancel", ids[-1], "--url", fake_stack.base_url])
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout == f"{ids[-1]}  CANCELLED\n"
    shown = runner.invoke(main, ["show", ids[-1], "--url", fake_stack.base_url])
    assert shown.exit_code == 1 and "job CANCELLED" in shown.output
    again = runner.invoke(main, ["cancel", ids[-1], "--json", "--url", fake_stack.base_url])
    assert again.exit_code == 1 and "already finished (CANCELLED)" in again.output
    finished = _stdout_json(
        runner.invoke(main, ["show", ids[0], "--wait", "--json", "--url", fake_stack.base_url])
    )
    assert finished["state"] == "SUCCEEDED"
    late = runner.invoke(main, ["cancel", ids[0], "--url", fake_stack.base_url])
    assert late.exit_code == 1 and "already finished (SUCCEEDED)" in late.output
