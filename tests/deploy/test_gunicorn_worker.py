"""The lean gunicorn worker answers exactly what gunicorn's own gevent worker answers.

Two real gunicorns run the same echo app (``echo_app``), one with gunicorn's gevent worker, one
with ``LeanGeventWorker``, each on a TCP port and a unix socket. Every case sends the same bytes
on one connection to both and compares what comes back: status lines, headers (``Date`` aside)
and bodies, the app's view of its environ included. The cases cover the requests the lean loop
serves itself and those it hands to gunicorn's parser, alone and mixed on one connection; the
app says which served it, so the comparison cannot pass by everything taking one path.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flaskmodel.deploy import gunicorn_worker
from tests.procs import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
STOCK = "gevent"
LEAN = "flaskmodel.deploy.gunicorn_worker.LeanGeventWorker"
# What gunicorn's access log can say of a request (the time and the peer's port aside).
ACCESS_FORMAT = '"%(r)s" %(s)s %(b)s %(m)s %(U)s %(q)s %(H)s %({x-forwarded-for}i)s %(a)s'


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    unix: str
    log: Path

    def address(self, family: str) -> Any:
        return ("127.0.0.1", self.port) if family == "tcp" else self.unix


def _start(worker_class: str, sock_dir: Path, name: str) -> Server:
    port = free_port()
    unix = str(sock_dir / f"{name}.sock")
    log = sock_dir / f"{name}.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "--workers=1", f"--worker-class={worker_class}",
                f"--bind=127.0.0.1:{port}", f"--bind=unix:{unix}", "--keep-alive=75",
                "--log-level=warning", f"--access-logfile={sock_dir / name}.access",
                f"--access-logformat={ACCESS_FORMAT}", "tests.deploy.echo_app:app",
            ],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    server = Server(process, port, unix, log)
    wait_for(lambda: _exchange(server, "tcp", [b"GET /up HTTP/1.0\r\n\r\n"]) != b"", 30, name)
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    # unix socket paths are short: AF_UNIX allows 108 bytes
    sock_dir = Path(tmp_path_factory.mktemp("gw", numbered=True))
    stock = _start(STOCK, sock_dir, "stock")
    lean = _start(LEAN, sock_dir, "lean")
    yield stock, lean
    for server in (stock, lean):
        server.process.terminate()
        server.process.wait(30)


def _exchange(server: Server, family: str, parts: list[bytes], pause: float = 0.0) -> bytes:
    """Send ``parts`` on one connection (``pause`` between them; joined in one send without),
    end our side and read all that comes back, until the server closes."""
    kind = socket.AF_INET if family == "tcp" else socket.AF_UNIX
    if not pause:
        parts = [b"".join(parts)]
    chunks = []
    with socket.socket(kind, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(server.address(family))
        try:
            for i, part in enumerate(parts):
                if i:
                    time.sleep(pause)
                sock.sendall(part)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first (after a 400): read what it sent
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def _responses(raw: bytes, head_only: bool = False) -> list[dict[str, Any]]:
    """The responses in ``raw``: status, headers (``Date`` out) and body (a JSON body parsed,
    with the fields that name a server's own port or socket, or a client port, blanked)."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
        fields = {name.lower(): value for name, value in headers}
        if head_only or lines[0].split(" ")[1].startswith("1"):  # HEAD, 100 Continue
            body = b""
        elif "content-length" in fields:
            size = int(fields["content-length"])
            body, raw = raw[:size], raw[size:]
        elif fields.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, raw = raw.partition(b"\r\n")
                if not size_line:  # cut off: the app failed while answering
                    body += b"<cut off>"
                    break
                size = int(size_line, 16)
                body, raw = body + raw[:size], raw[size + 2 :]
                if size == 0:
                    break
        else:  # delimited by the close
            body, raw = raw, b""
        served = fields.get("x-input")
        kept = [h for h in headers if h[0] not in ("Date", "X-Input")]
        out.append({"status": lines[0], "headers": kept, "body": _body(body), "served": served})
    return out


def _body(body: bytes) -> Any:
    try:
        seen = json.loads(body)
    except ValueError:
        return body
    if "REMOTE_PORT" in seen:
        seen["REMOTE_PORT"] = "*"
    if seen.get("SERVER_NAME") == "127.0.0.1":  # TCP: each server's own port
        seen["SERVER_PORT"] = "*"
    return seen


def _compare(
    servers: tuple[Server, Server], parts: list[bytes], pause: float = 0.0, head_only: bool = False
) -> list[list[dict[str, Any]]]:
    """Both workers' answers on TCP and on the unix socket: equal but for who served; returns
    the lean worker's, one list per family."""
    stock, lean = servers
    got = []
    for family in ("tcp", "unix"):
        theirs = _responses(_exchange(stock, family, parts, pause), head_only)
        ours = _responses(_exchange(lean, family, parts, pause), head_only)
        assert theirs, f"gunicorn answered nothing ({family})"
        assert [_anonymous(r) for r in ours] == [_anonymous(r) for r in theirs], family
        assert all(_served(r) in ("gunicorn", None) for r in theirs)
        got.append(ours)
    return got


def _anonymous(response: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in response.items() if key != "served"}


def _served(response: dict[str, Any]) -> str | None:
    served: str | None = response["served"]
    return served


def _request(
    method: str = "POST",
    target: str = "/v1/models/tiny:predict",
    body: bytes = b'{"instances": [[1.0, 2.0]]}',
    headers: tuple[str, ...] = (),
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {target} {version}", "Host: models.example:8080", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


NGINX = (
    "Connection: ",
    "X-Forwarded-For: 10.1.2.3",
    "X-Forwarded-Proto: https",
    "X-Request-Id: 4f1c2a",
    "Content-Type: application/json",
    "Authorization: Bearer k3y",
)


@pytest.mark.parametrize(
    "parts",
    [
        [_request(headers=NGINX)],
        [_request("GET", "/v1/jobs/a%20b/%2Fc?wait=30&x=%2F", b"", ("Accept: */*",))],
        [_request("GET", "//double/slash?q=1", b"")],
        [_request(headers=("X-Empty:", "X-Spaced:  padded \t", "X-Tab: a\tb"))],
        [_request(body=b"")],
        [_request(headers=("X-Forwarded-Proto: http",))],
        [_request("PUT", "/v1/kv/a", b"x" * 100_000)],
        [_request(), _request("DELETE", "/v1/jobs/1", b"", ("Connection: close",)), _request()],
        [_request(version="HTTP/1.0"), _request()],  # 1.0 closes: the second is never read
        [_request(version="HTTP/1.0", headers=("Connection: keep-alive",)), _request()],
        [_request(headers=("Connection: close",)), _request()],
        [_request("GET", "/chunked", b"")],
        [_request("GET", "/chunked", b"", version="HTTP/1.0")],
        [_request("GET", "/no-content", b"")],
        [_request("GET", "/raise", b""), _request()],
        [_request("GET", "/raise-late", b"")],
        [_request() + _request("OPTIONS", "/x", b"") + _request("PATCH", "/y?z", b"{}")],
    ],
)
def test_requests_served_by_the_lean_loop(
    servers: tuple[Server, Server], parts: list[bytes]
) -> None:
    for ours in _compare(servers, parts):
        assert {_served(r) for r in ours} <= {"lean", None}


def test_a_request_arriving_in_pieces(servers: tuple[Server, Server]) -> None:
    whole = _request(headers=NGINX, body=b'{"instances": [' + b"[0.5, 1.5]," * 4000 + b"[1.0]]}")
    pieces = [whole[:7], whole[7:90], whole[90:300], whole[300:5000], whole[5000:]]
    for ours in _compare(servers, pieces, pause=0.05):
        assert [_served(r) for r in ours] == ["lean"]


def test_head_has_no_body(servers: tuple[Server, Server]) -> None:
    for ours in _compare(servers, [_request("HEAD", "/x", b"")], head_only=True):
        assert len(ours) == 1


@pytest.mark.parametrize(
    "odd",
    [
        b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
        _request(headers=("Expect: 100-continue",)),
        _request(headers=("X_Custom: dropped by gunicorn",)),
        _request(headers=("Accept: a/b", "Accept: c/d")),  # repeated: joined
        _request(headers=("Host: second.example",)),  # a repeated singleton: 400
        _request(headers=("X-Folded: one", " two")),  # obsolete folding: 400
        _request(headers=("X-Forwarded-Proto: https", "X-Forwarded-Ssl: off")),  # conflict: 400
        _request(headers=("Content-Length: 3",)),  # two lengths: 400
        _request(headers=("Bad Name: x",)),
        _request(headers=("X-Nul: a\x00b",)),
        _request("get"),
        _request("PROPFIND", "/dav", b""),
        _request(target="http://models.example/v1/models/tiny:predict"),
        _request(target="/frag#ment"),
        _request(target="/caf\xe9"),
        _request(version="HTTP/1.2"),
        b"GET  /two-spaces HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /no-version\r\n\r\n",
        _request(headers=(f"X-Long: {'v' * 9000}",)),  # over limit_request_field_size: 431
        _request(target="/" + "p" * 5000),  # over limit_request_line: 414
        _request(headers=tuple(f"X-N{i}: {i}" for i in range(120))),  # over 100 fields: 431
    ],
)
def test_other_requests_taken_by_gunicorn(servers: tuple[Server, Server], odd: bytes) -> None:
    """Mixed on one connection: plain, odd, plain. gunicorn answers the odd one as it always did,
    and whatever comes after it on that connection."""
    for ours in _compare(servers, [_request(), odd, _request()]):
        assert _served(ours[0]) == "lean"
        assert "lean" not in [_served(r) for r in ours[1:]]


def test_a_body_over_the_limit_is_streamed_by_gunicorn(servers: tuple[Server, Server]) -> None:
    big = _request("PUT", "/v1/kv/big", b"b" * (gunicorn_worker.BODY_MAX + 1))
    for ours in _compare(servers, [big]):
        assert [_served(r) for r in ours] == ["gunicorn"]
        assert ours[0]["body"]["body"][0] == gunicorn_worker.BODY_MAX + 1  # all of it read


def test_a_body_read_is_let_go(servers: tuple[Server, Server]) -> None:
    """Once the app has read the body, the server holds no reference to it (a request waits on
    the workers after reading its body, and a CT slice as JSON is 1.5 MB)."""
    small = _request(body=b"[" + b"0.25," * 2_000 + b"1]")  # within the first read
    large = _request(body=b"[" + b"0.25," * 50_000 + b"1]")  # mostly read after its head
    arrived = [small, large]
    for ours in _compare(servers, arrived):
        assert [_served(r) for r in ours] == ["lean", "lean"]
        assert [r["body"]["body"][2] for r in ours] == [0, 0]


def test_an_idle_connection_is_kept(servers: tuple[Server, Server]) -> None:
    """Keep-alive across a pause: both requests answered on one connection."""
    for ours in _compare(servers, [_request(), _request()], pause=1.0):
        assert [_served(r) for r in ours] == ["lean", "lean"]


def test_wsgi_errors_reach_the_error_log(servers: tuple[Server, Server]) -> None:
    for server in servers:
        line = f"echo-app-{server.port}"
        raw = _exchange(server, "tcp", [_request("GET", f"/errors?{line}", b"")])
        assert _responses(raw)[0]["status"] == "HTTP/1.1 200 OK"
        log, text = server.log, line
        wait_for(lambda: text in log.read_text(errors="replace"), 10, "the line logged")  # noqa: B023


def test_the_access_log_says_the_same(servers: tuple[Server, Server]) -> None:
    request = _request("POST", "/logged?q=1", b"{}", ("X-Forwarded-For: 10.9.8.7", "User-Agent: t"))
    lines = []
    for server in servers:
        _exchange(server, "tcp", [request])
        log = server.log.with_suffix(".access")
        wait_for(lambda: "/logged" in log.read_text(), 10, "the access line")  # noqa: B023
        lines.append(log.read_text().splitlines()[-1])
    assert lines[0] == lines[1]
    assert lines[1].startswith('"POST /logged?q=1 HTTP/1.1" 200 ')
    assert lines[1].endswith(" POST /logged q=1 HTTP/1.1 10.9.8.7 t")
