"""No log line can be forged from a request: CR/LF (and other controls) from a path, header or
body are escaped in the real log output of gunicorn and of a configured process."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import uuid
from pathlib import Path

import requests

from flaskmodel.logs import SafeText, escape_controls
from tests import databases, procs
from tests.conftest import redis_db

FORGED = "2026-01-01 00:00:00,000 CRITICAL 1 flaskmodel.auth: admin logged in"
LINE_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \d+ |\[\d{4}-\d\d-\d\d )")


def test_crlf_in_a_request_path_cannot_forge_a_gunicorn_log_line(
    tmp_path: Path, redis_url: str
) -> None:
    from flaskmodel.settings import Settings  # noqa: PLC0415

    # A Redis database no worker heartbeats on: the submit is refused (503) and the refusal,
    # which names the model from the path, is logged as a warning.
    settings = Settings(
        models_root=tmp_path,
        data_root=tmp_path,
        run_dir=tmp_path,
        redis={"url": redis_db(redis_url, databases.LOGS)},
    )
    port = procs.free_port()
    log = tmp_path / "gunicorn.log"
    proc = procs.start_gunicorn(settings, log, port)
    marker = uuid.uuid4().hex[:8]
    try:
        evil = f"m{marker}%0D%0A{FORGED.replace(' ', '%20')}%E2%80%A8x"
        response = requests.post(
            f"http://127.0.0.1:{port}/v2/models/{evil}/infer",
            json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
            timeout=10,
        )
        assert response.status_code in (400, 404, 503), response.text
        procs.wait_for(lambda: marker in log.read_text(), 5, "the logged refusal")
    finally:
        procs.stop(proc)
    text = log.read_text()
    mentioning = [line for line in text.splitlines() if marker in line or "admin logged" in line]
    print(f"\nlog lines naming the request: {mentioning}")
    assert len(mentioning) == 1
    assert mentioning[0].index(marker) < mentioning[0].index("admin logged in")
    assert "\\r\\n2026-01-01" in mentioning[0] and "\\u2028" in mentioning[0]
    for line in text.splitlines():
        assert not line.startswith(FORGED[:10]), line


def test_text_format_escapes_messages_and_indents_tracebacks() -> None:
    handler_out = _run_logging("text")
    lines = handler_out.splitlines()
    starts = [line for line in lines if LINE_START.match(line)]
    assert all(not line.startswith(" ") for line in starts)
    assert not any(line.startswith(FORGED[:10]) for line in lines)
    assert len(starts) == 2, handler_out  # the message and the exception's record
    assert "\\r\\n" + FORGED in starts[0]
    assert all(line.startswith("    ") for line in lines if not LINE_START.match(line))


def test_json_lines_stay_one_object_per_line() -> None:
    out = _run_logging("json")
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2
    assert records[0]["message"].endswith("\r\n" + FORGED)


def test_escape_controls() -> None:
    assert (
        escape_controls("a\r\nb\x1b[31m\x00\tc\u2028\x85")
        == "a\\r\\nb\\x1b[31m\\x00\tc\\u2028\\x85"
    )
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "path %s", ("/a\nb",), None)
    assert SafeText("%(message)s").format(record) == "path /a\\nb"


def _run_logging(mode: str) -> str:
    """Real output of ``configure`` in a fresh process (its own stderr handler)."""
    code = (
        "import logging, sys\n"
        "from flaskmodel.logs import configure\n"
        "from flaskmodel.settings import Settings\n"
        f"configure(Settings(log={{'json_lines': {mode == 'json'}}}))\n"
        "log = logging.getLogger('flaskmodel.test')\n"
        "log.warning('path %s', sys.argv[1])\n"
        "try:\n"
        "    raise ValueError(sys.argv[1])\n"
        "except ValueError:\n"
        "    log.exception('failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "/v1/jobs/x\r\n" + FORGED],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stderr
