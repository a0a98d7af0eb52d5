"""The gunicorn patch that sends a small response's headers and body in one ``sendall``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn import util
from gunicorn.http.wsgi import Response

from flaskmodel.deploy import gunicorn_hooks


class Socket:
    """Records every ``send`` and ``sendall``; a ``send`` takes at most ``most`` bytes."""

    def __init__(self, most: int = 1 << 30) -> None:
        self.sent: list[bytes] = []
        self.most = most

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data[: self.most]))
        return min(len(data), self.most)

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def _respond(body: bytes, headers: list[tuple[str, str]], chunks: int = 1) -> list[bytes]:
    sock = Socket()
    request = SimpleNamespace(version=(1, 1), method="POST", should_close=lambda: False)
    cfg = SimpleNamespace(is_ssl=False, sendfile=False, header_map="drop")
    response: Any = Response(request, sock, cfg)
    response.start_response("200 OK", headers)
    size = len(body) // chunks or 1
    for start in range(0, len(body), size):
        response.write(body[start : start + size])
    response.close()
    return sock.sent


@pytest.fixture
def unpatched() -> Any:
    write = Response.write
    yield write
    Response.write = write


@pytest.mark.parametrize(
    ("body", "headers", "chunks", "sends"),
    [
        (b'{"predictions": [[0.5]]}', [("Content-Length", "24")], 1, (2, 1)),
        (b"x" * 100, [("Content-Type", "text/plain"), ("Content-Length", "100")], 1, (2, 1)),
        (b"x" * 100, [("Content-Length", "100")], 2, (3, 2)),  # the second piece on its own
        (b"y" * 70_000, [("Content-Length", "70000")], 1, (2, 2)),  # large: not copied
        (b"z" * 10, [], 1, None),  # no length: chunked, as gunicorn does it
    ],
)
def test_same_bytes_fewer_sends(
    unpatched: Any,
    monkeypatch: pytest.MonkeyPatch,
    body: bytes,
    headers: list[tuple[str, str]],
    chunks: int,
    sends: tuple[int, int] | None,
) -> None:
    monkeypatch.setattr(util, "http_date", lambda timestamp=None: "Thu, 03 Dec 2026 10:00:00 GMT")
    before = _respond(body, headers, chunks)
    gunicorn_hooks.one_send_per_response()
    assert Response.write is not unpatched
    after = _respond(body, headers, chunks)
    assert b"".join(after) == b"".join(before)  # byte for byte what gunicorn sends
    assert (len(before), len(after)) == (sends or (len(before), len(before)))


def test_a_partial_send_is_finished_by_sendall() -> None:
    sock = Socket(most=10)
    gunicorn_hooks.send_all(sock, b"0123456789abcdefghij" * 5)
    assert sock.sent == [b"0123456789", b"abcdefghij" + b"0123456789abcdefghij" * 4]
