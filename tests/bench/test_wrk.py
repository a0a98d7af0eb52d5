"""wrk's POST script, for real: the body, the content type and the extra header fields it sends."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from flaskmodel.bench.wrk import POST_SCRIPT, run_wrk

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str | None, str | None, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.headers["Authorization"], self.headers["Content-Type"], body))
        status = 200 if self.headers["Authorization"] == "Bearer k-123" else 401
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_every_request_carries_the_given_header_fields(server: str, tmp_path: Path) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(b"\x00\x01payload")
    cell = run_wrk(
        server + "/raw/x", script=POST_SCRIPT, body=body, connections=1, seconds=1,
        work_dir=tmp_path, content_type="application/octet-stream",
        headers={"Authorization": "Bearer k-123"},
    )  # fmt: skip
    assert cell.requests > 0
    assert cell.completed == cell.requests  # every one answered 200: the key was there
    assert set(_Recorder.seen) == {("Bearer k-123", "application/octet-stream", b"\x00\x01payload")}


def test_without_header_fields_none_is_added(server: str, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text("{}")
    cell = run_wrk(
        server + "/", script=POST_SCRIPT, body=body, connections=1, seconds=1, work_dir=tmp_path
    )
    assert cell.completed == 0  # 401 is not completed
    assert {auth for auth, _, _ in _Recorder.seen} == {None}
