"""The front door process side: the SCP and the STOW-RS listener (real waitress) started together,
one store and one callback, driven by dcmtk, requests and raw sockets."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from waitress.server import create_server
from waitress.wasyncore import close_all

from flaskmodel.dicom.network.store import StoredInstance
from flaskmodel.gateway.receiver import Receiver, _serve, start_receiver
from flaskmodel.settings import Settings
from tests.dicom.network.dimse import (
    AE_TITLE,
    J2K_FOLDER,
    ct_dataset,
    echoscu,
    multipart,
    part10,
    sample_files,
)

LIMIT = 4 * 1024 * 1024
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b'


class Collected:
    """``on_stored`` for the tests: records every call (from any thread)."""

    def __init__(self) -> None:
        self.items: list[StoredInstance] = []
        self._lock = threading.Lock()

    def __call__(self, stored: StoredInstance) -> None:
        with self._lock:
            self.items.append(stored)


StartReceiver = Callable[..., tuple[Receiver, Collected]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartReceiver]:
    running: list[Receiver] = []

    def start(unix_socket: Path | None = None, **dicom: Any) -> tuple[Receiver, Collected]:
        settings = Settings(
            data_root=tmp_path / "root",
            dicom={"port": 0, "http_port": 0, "max_stow_bytes": LIMIT, **dicom},
        )
        collected = Collected()
        running.append(start_receiver(settings, collected, unix_socket=unix_socket))
        return running[-1], collected

    yield start
    for receiver in running:
        receiver.stop()


@pytest.fixture
def receiver(start: StartReceiver) -> tuple[Receiver, Collected]:
    return start()


def _url(receiver: Receiver, path: str) -> str:
    return f"http://127.0.0.1:{receiver.http_port}{path}"


def _raw_exchange(port: int, head: bytes, chunks: Iterator[bytes]) -> bytes:
    """Send a request head, then body chunks (from a thread) until the server answers and
    closes; returns the answer's bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        answered = threading.Event()

        def send() -> None:
            for chunk in chunks:
                if answered.is_set():
                    return
                try:
                    sock.sendall(chunk)
                except OSError:  # the server answered and closed: expected
                    return

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answered.set()
                answer += chunk
        except ConnectionResetError:  # closed with our unread body in its buffer
            pass
        answered.set()
        sender.join(30)
    return answer


def _json_answer(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower()
    return status, json.loads(body)


def test_health(receiver: tuple[Receiver, Collected]) -> None:
    server, _ = receiver
    answer = requests.get(_url(server, "/dicomweb/healthz"), timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_stow_and_c_store_write_through_one_store_and_one_callback(
    receiver: tuple[Receiver, Collected],
) -> None:
    server, collected = receiver
    files = sample_files()
    body, content_type = multipart(p.read_bytes() for p in files)
    answer = requests.post(
        _url(server, "/dicomweb/studies"),
        data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/dicom+json")
    assert len(answer.json()["00081199"]["Value"]) == 20
    for sample in files:
        header = pydicom.dcmread(sample, stop_before_pixels=True)
        stored = server.store.root / header.SeriesInstanceUID / f"{header.SOPInstanceUID}.dcm"
        assert stored.read_bytes() == sample.read_bytes()
    sent = subprocess.run(
        ["storescu", "-xv", "-aec", AE_TITLE, "+sd", "127.0.0.1", str(server.scp_port),
         str(J2K_FOLDER)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert [c.calling_ae_title for c in collected.items] == ["STOW-RS"] * 20 + ["STORESCU"] * 20
    assert [c.duplicate for c in collected.items] == [False] * 20 + [True] * 20
    assert echoscu(server.scp_port).returncode == 0


def test_stow_to_a_study_refuses_instances_of_another(
    receiver: tuple[Receiver, Collected],
) -> None:
    server, collected = receiver
    body, content_type = multipart([part10(ct_dataset(study_uid="1.2.3"))])
    answer = requests.post(
        _url(server, "/dicomweb/studies/1.2.99"),
        data=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert answer.status_code == 409
    assert answer.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert collected.items == []


def test_a_declared_2_gib_body_is_413_json_and_nothing_is_stored(
    receiver: tuple[Receiver, Collected],
) -> None:
    server, collected = receiver
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {STOW_TYPE}\r\n"
        f"Content-Length: {2**31}\r\n\r\n"
    ).encode()
    raw = _raw_exchange(server.http_port or 0, head, iter([b"\0" * 65536] * 64))
    status, body = _json_answer(raw)
    assert status == 413
    assert body == {
        "error": f"request body is larger than the limit of {LIMIT} bytes",
        "type": "payload_too_large",
    }
    assert collected.items == []
    assert list(server.store.root.glob("*/*")) == []
    assert requests.get(_url(server, "/dicomweb/healthz"), timeout=10).status_code == 200


def test_a_chunked_body_streamed_past_the_limit_is_413_json(
    receiver: tuple[Receiver, Collected],
) -> None:
    server, collected = receiver
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {STOW_TYPE}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
    raw = _raw_exchange(server.http_port or 0, head, iter([chunk] * (2 * LIMIT // 65536)))
    status, body = _json_answer(raw)
    assert status == 413
    assert body["type"] == "payload_too_large"
    assert collected.items == []
    assert list(server.store.incoming.iterdir()) == []
    assert echoscu(server.scp_port).returncode == 0


@pytest.mark.parametrize(
    ("content_type", "status", "type_"),
    [
        ('multipart/related; type="application/dicom"', 400, "invalid_request"),
        ("application/dicom", 415, "unsupported_media_type"),
        ('multipart/related; type="application/dicom+xml"; boundary=b', 415,
         "unsupported_media_type"),
    ],
)  # fmt: skip
def test_request_errors_are_json(
    receiver: tuple[Receiver, Collected], content_type: str, status: int, type_: str
) -> None:
    server, _ = receiver
    body, _ = multipart([part10(ct_dataset())], boundary="b")
    answer = requests.post(
        _url(server, "/dicomweb/studies"),
        data=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert answer.status_code == status
    assert answer.json()["type"] == type_
    assert answer.json()["error"]


def test_unknown_routes_and_methods_are_json(receiver: tuple[Receiver, Collected]) -> None:
    server, _ = receiver
    missing = requests.get(_url(server, "/dicomweb/nothing"), timeout=10)
    assert (missing.status_code, missing.json()["type"]) == (404, "not_found")
    wrong = requests.get(_url(server, "/dicomweb/studies"), timeout=10)
    assert (wrong.status_code, wrong.json()["type"]) == (405, "method_not_allowed")
    assert "POST" in wrong.headers["Allow"]


def test_the_http_listener_can_be_a_unix_socket(start: StartReceiver, tmp_path: Path) -> None:
    path = tmp_path / "stow.sock"
    server, _ = start(unix_socket=path)
    assert server.http_port is None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        connection = http.client.HTTPConnection("localhost")
        connection.sock = sock
        connection.request("GET", "/dicomweb/healthz")
        answer = connection.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read()) == {"status": "ok"}


def test_stop_closes_both_ports(start: StartReceiver) -> None:
    server, _ = start()
    ports = [server.scp_port, server.http_port or 0]
    server.stop()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_listener_loop_ends_quietly_on_sockets_closed_by_stop() -> None:
    """``stop`` closes waitress's sockets from its own thread; the loop's next ``select`` then
    meets a closed descriptor. After ``stop`` began that ends the loop; before, it is an error."""
    for stopping in (True, False):
        server = create_server(lambda environ, start_response: [], host="127.0.0.1", port=0)
        server.socket.close()
        stopped = threading.Event()
        if stopping:
            stopped.set()
            _serve(server, stopped)
        else:
            with pytest.raises(OSError):
                _serve(server, stopped)
        close_all(server._map)
