"""The foreground stack for real: supervisord, redis, nginx and (fake or real) app tiers.

Most tests swap the worker and web programs for small stand-ins (``fake_web.py`` answers
``/readyz`` once Redis answers), so supervisord's start/stop, readiness, diagnostics and the
no-stray-process guarantee are tested without the app tiers. The ``e2e`` test runs the real
``flaskmodel up``.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import redis

from flaskmodel.deploy.paths import StackPaths
from flaskmodel.deploy.processes import descendants
from flaskmodel.deploy.stack import (
    diagnose,
    run_stack,
    start_supervisor,
    stop_supervisor,
    supervisor_alive,
)
from flaskmodel.deploy.supervisor_conf import render_stack
from flaskmodel.settings import Settings
from tests import procs
from tests.conftest import CHEST, SAMPLES, write_fake_model

SRC = Path(__file__).resolve().parents[2] / "src"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

FAKE_WEB = r'''
"""Stand-in for gunicorn: /readyz is 200 once Redis answers; /env shows FLASKMODEL_* env."""
import http.server, json, os, socket, socketserver, sys
import redis

bind, mode = sys.argv[1], sys.argv[2]
client = redis.Redis.from_url(
    os.environ["FLASKMODEL_REDIS__URL"],
    password=os.environ.get("FLASKMODEL_REDIS__PASSWORD"),
    socket_timeout=1,
)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/readyz":
            try:
                ok = mode == "ready" and client.ping()
            except redis.RedisError:
                ok = False
            status, body = (200 if ok else 503), {"ready": bool(ok)}
        elif self.path == "/env":
            status = 200
            body = {k: v for k, v in os.environ.items() if k.startswith("FLASKMODEL_")}
        else:
            status, body = 404, {}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self):
        return "local"

class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    def server_bind(self):
        if os.path.exists(self.server_address):
            os.unlink(self.server_address)
        super().server_bind()

if bind.startswith("unix:"):
    server = UnixServer(bind[5:], Handler)
else:
    host, port = bind.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
print("fake web serving on", bind, flush=True)
server.serve_forever()
'''

FAKE_WORKER = r'''
"""Stand-in for the worker: a process with a child of its own (a pool), or one that fails."""
import signal, subprocess, sys, time
if sys.argv[2] == "stubborn":  # a job that will not end: only SIGKILL stops it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[2] == "fail":
    print("worker boom: cannot start", flush=True)
    sys.exit(3)
pool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", sys.argv[1]])
print("fake worker up", flush=True)
time.sleep(3600)
'''

DRIVER = r'''
"""Runs run_stack with the worker and web programs swapped for the stand-ins."""
import configparser, json, shlex, sys
from pathlib import Path
import flaskmodel.deploy.stack as stack
from flaskmodel.demo.samples import sample_requests
from flaskmodel.settings import Settings

spec = json.loads(sys.argv[1])
render = stack.render_stack

def render_with_stand_ins(settings, *, use_nginx):
    paths, effective = render(settings, use_nginx=use_nginx)
    web = paths.gunicorn_sock and f"unix:{paths.gunicorn_sock}" or f"127.0.0.1:{spec['port']}"
    commands = {
        "web": [sys.executable, spec["fake_web"], web, spec["web_mode"]],
        "worker": [sys.executable, spec["fake_worker"], str(paths.run_dir), spec["worker_mode"]],
    }
    conf = configparser.RawConfigParser()
    conf.read(paths.supervisord_conf)
    for name, command in commands.items():
        conf[f"program:{name}"]["command"] = shlex.join(command)
        conf[f"program:{name}"]["startsecs"] = "1"
    with open(paths.supervisord_conf, "w") as handle:
        conf.write(handle)
    return paths, effective

stack.render_stack = render_with_stand_ins
settings = Settings(
    run_dir=Path(spec["run_dir"]),
    web={"port": spec["port"]},
    redis={"password": "pw-s3cret"},
    # The DICOM front door runs too, on a free DICOM port.
    dicom={"port": 0},
)
samples = sample_requests(settings)
sys.exit(stack.run_stack(settings, ready_timeout=spec["ready_timeout"], samples=samples))
'''


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live (non-zombie) processes that mention ``text``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and text in cmdline and proc.info["status"] != "zombie":
            found.append(f"{proc.pid}: {cmdline}")
    return found


def _alive(snapshot: dict[int, float]) -> list[int]:
    """Which of the (pid → start time) processes still run (read here with psutil directly)."""
    alive = []
    for pid, start in snapshot.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == start and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def _get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with _opener.open(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return env


# --- supervisord with the redis program alone -------------------------------------------------


@pytest.fixture
def supervised() -> Iterator[Callable[[StackPaths, Settings], subprocess.Popen[bytes]]]:
    """Starts supervisord like run_stack does; whatever is left running is stopped at the end."""
    started: list[tuple[subprocess.Popen[bytes], StackPaths]] = []

    def start(paths: StackPaths, settings: Settings) -> subprocess.Popen[bytes]:
        proc = start_supervisor(paths, settings)
        started.append((proc, paths))
        return proc

    yield start
    for proc, paths in started:
        stop_supervisor(proc, paths, timeout=20)


def _redis_only(paths: StackPaths) -> StackPaths:
    conf = configparser.RawConfigParser()
    conf.read(paths.supervisord_conf)
    for name in paths.programs:
        if name != "redis":
            conf.remove_section(f"program:{name}")
    with paths.supervisord_conf.open("w") as handle:
        conf.write(handle)
    return dataclasses.replace(paths, programs=("redis",), stop_timeout=45.0)


def test_supervisor_starts_and_stops_redis(
    tmp_path: Path, supervised: Callable[[StackPaths, Settings], subprocess.Popen[bytes]]
) -> None:
    run_dir = tmp_path / "run"
    paths, effective = render_stack(Settings(run_dir=run_dir), use_nginx=False)
    paths = _redis_only(paths)
    assert effective.redis.url is not None

    assert effective.redis.password is not None
    password = effective.redis.password.get_secret_value()
    for attempt in range(2):
        proc = supervised(paths, effective)
        client = redis.Redis.from_url(effective.redis.url, password=password, socket_timeout=2)
        try:
            procs.wait_for(client.ping, 20, "redis under supervisord", proc)
            if attempt == 0:
                client.set("flaskmodel:stack-test", "kept")
            else:  # AOF in the run directory keeps data between runs
                assert client.get("flaskmodel:stack-test") == b"kept"
        finally:
            client.close()
        assert supervisor_alive(paths)
        procs.wait_for(lambda: "RUNNING" in diagnose(paths), 20, "redis RUNNING", proc)
        assert diagnose(paths).split()[:2] == ["redis", "RUNNING"]
        running = descendants(proc.pid)
        assert running, "redis-server should be supervisord's child"

        assert stop_supervisor(proc, paths, timeout=30) is True
        assert proc.returncode == 0
        assert _alive(running) == []
        assert _processes_mentioning(str(run_dir)) == []
        assert not supervisor_alive(paths)


def test_stop_supervisor_kills_when_it_will_not_stop(
    tmp_path: Path, supervised: Callable[[StackPaths, Settings], subprocess.Popen[bytes]]
) -> None:
    run_dir = tmp_path / "run"
    paths, effective = render_stack(Settings(run_dir=run_dir), use_nginx=False)
    paths = _redis_only(paths)
    proc = supervised(paths, effective)
    assert paths.redis_sock is not None
    procs.wait_for(paths.redis_sock.exists, 20, "redis socket", proc)
    running = descendants(proc.pid)
    # A zero deadline leaves no time to stop gracefully: the last resort must leave nothing.
    assert stop_supervisor(proc, paths, timeout=0) is False
    assert proc.returncode is not None
    assert _alive(running) == []
    assert _processes_mentioning(str(run_dir)) == []


# --- run_stack with stand-in tiers ----------------------------------------------------------


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Starts run_stack in a subprocess (stand-in tiers); kills whatever is left at the end."""
    fake_web, fake_worker = tmp_path / "fake_web.py", tmp_path / "fake_worker.py"
    fake_web.write_text(FAKE_WEB)
    fake_worker.write_text(FAKE_WORKER)
    started: list[subprocess.Popen[bytes]] = []
    handles = []

    def start(
        *, port: int, web_mode: str = "ready", worker_mode: str = "ok", ready_timeout: float = 60
    ) -> tuple[subprocess.Popen[bytes], Path]:
        spec = {
            "run_dir": str(tmp_path / "run"),
            "port": port,
            "fake_web": str(fake_web),
            "fake_worker": str(fake_worker),
            "web_mode": web_mode,
            "worker_mode": worker_mode,
            "ready_timeout": ready_timeout,
        }
        out = tmp_path / f"driver-{len(started)}.log"
        handle = out.open("wb")
        handles.append(handle)
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(spec)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_env(),
        )
        started.append(proc)
        return proc, out

    yield start
    for proc in started:
        if proc.poll() is None:
            snapshot = descendants(proc.pid)
            proc.kill()
            proc.wait()
            for pid in _alive(snapshot):
                os.kill(pid, signal.SIGKILL)
    for handle in handles:
        handle.close()


def _wait_for_text(out: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        procs.wait_for(lambda: text in out.read_text(), timeout, f"{text!r} in {out}", proc)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"{exc}; output:\n{out.read_text()[-4000:]}") from exc


def test_run_stack_serves_and_stops_cleanly(
    tmp_path: Path, driver: Callable[..., tuple[subprocess.Popen[bytes], Path]]
) -> None:
    port = procs.free_port()
    proc, out = driver(port=port)
    _wait_for_text(out, "FlaskModel is up", proc, 60)
    run_dir = tmp_path / "run"
    text = out.read_text()
    assert f"FlaskModel is up: http://127.0.0.1:{port}" in text
    assert f"curl -s -X POST http://127.0.0.1:{port}/v1/jobs" in text
    assert _get(f"http://127.0.0.1:{port}/readyz") == (200, {"ready": True})
    status, env = _get(f"http://127.0.0.1:{port}/env")
    assert status == 200
    assert env["FLASKMODEL_REDIS__URL"] == f"unix://{run_dir}/redis.sock"
    assert env["FLASKMODEL_WEB__PORT"] == str(port)
    # The secret reaches the programs through supervisord's environment, never through a file.
    assert env["FLASKMODEL_REDIS__PASSWORD"] == "pw-s3cret"
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".conf", ".py"):
            assert b"pw-s3cret" not in path.read_bytes(), path
    running = descendants(proc.pid)
    assert len(running) >= 5  # supervisord, redis, worker + pool, web (+ nginx and its workers)

    # A second stack on the same run directory is refused without touching the first.
    messages: list[str] = []
    second = Settings(run_dir=run_dir, web={"port": procs.free_port()})
    assert run_stack(second, announce=messages.append) == 2
    assert "already runs" in messages[0]

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert time.monotonic() - started < 60
    assert _alive(running) == []
    assert _processes_mentioning(str(run_dir)) == []
    assert "stopped" in out.read_text().splitlines()[-1]


def test_run_stack_gives_up_on_a_program_that_cannot_start(
    tmp_path: Path, driver: Callable[..., tuple[subprocess.Popen[bytes], Path]]
) -> None:
    proc, out = driver(
        port=procs.free_port(), web_mode="never", worker_mode="fail", ready_timeout=120
    )
    assert proc.wait(timeout=60) == 1  # at FATAL, long before the ready timeout
    text = out.read_text()
    assert "worker could not start" in text
    assert re.search(r"^worker +FATAL", text, re.MULTILINE)
    assert re.search(r"^redis +RUNNING", text, re.MULTILINE)
    assert "worker boom: cannot start" in text  # the failing program's log tail
    assert _processes_mentioning(str(tmp_path / "run")) == []


def test_run_stack_reports_a_stack_that_is_not_ready(
    tmp_path: Path, driver: Callable[..., tuple[subprocess.Popen[bytes], Path]]
) -> None:
    port = procs.free_port()
    proc, out = driver(port=port, web_mode="never", ready_timeout=4)
    assert proc.wait(timeout=60) == 1
    text = out.read_text()
    assert f"not ready after 4 s; http://127.0.0.1:{port}/readyz: 503" in text
    assert _processes_mentioning(str(tmp_path / "run")) == []


def test_a_second_signal_kills_a_stack_that_will_not_stop(
    tmp_path: Path, driver: Callable[..., tuple[subprocess.Popen[bytes], Path]]
) -> None:
    proc, out = driver(port=procs.free_port(), worker_mode="stubborn")
    _wait_for_text(out, "FlaskModel is up", proc, 60)
    running = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    _wait_for_text(out, "Ctrl-C again", proc, 10)
    time.sleep(2)  # supervisord now waits for the worker, up to its stopwaitsecs
    assert proc.poll() is None
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 1
    assert time.monotonic() - started < 20
    assert _alive(running) == []
    assert _processes_mentioning(str(tmp_path / "run")) == []


def test_run_stack_cleans_up_after_supervisord_dies(
    tmp_path: Path, driver: Callable[..., tuple[subprocess.Popen[bytes], Path]]
) -> None:
    proc, out = driver(port=procs.free_port())
    _wait_for_text(out, "FlaskModel is up", proc, 60)
    running = descendants(proc.pid)
    supervisord = [
        pid for pid in running if "supervisord" in " ".join(psutil.Process(pid).cmdline())
    ]
    assert len(supervisord) == 1
    os.kill(supervisord[0], signal.SIGKILL)
    assert proc.wait(timeout=30) == 1
    assert "supervisord exited unexpectedly" in out.read_text()
    assert _alive(running) == []
    assert _processes_mentioning(str(tmp_path / "run")) == []


def test_run_stack_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        messages: list[str] = []
        rc = run_stack(Settings(run_dir=tmp_path / "run"), port=port, announce=messages.append)
    assert rc == 2
    assert f"127.0.0.1:{port} is not available" in messages[0]
    assert not (tmp_path / "run").exists()


# --- the real thing --------------------------------------------------------------------------


@pytest.mark.e2e
def test_flaskmodel_up_end_to_end(tmp_path: Path) -> None:
    """`flaskmodel up` with the real tiers (fake model runtime): ready, a job, a clean stop."""
    models = tmp_path / "models"
    write_fake_model(
        models,
        "tiny",
        1,
        {
            "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 32]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 3]}],
        },
    )
    write_fake_model(
        models,
        "slice",
        1,
        {
            "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 256, 256, 1]}],
            "outputs": [{"name": "scores", "dtype": "float32", "shape": [None, 3]}],
        },
    )
    run_dir = tmp_path / "run"
    port, dicom_port = procs.free_port(), procs.free_port()
    env = _env() | {
        "FLASKMODEL_RUN_DIR": str(run_dir),
        "FLASKMODEL_MODELS_ROOT": str(models),
        "FLASKMODEL_DATA_ROOT": str(tmp_path / "data"),
        "FLASKMODEL_RUNTIME__BACKEND": "fake",
        "FLASKMODEL_WORKER__HEARTBEAT_SECONDS": "1",
        "FLASKMODEL_WEB__WORKERS": "1",
        "FLASKMODEL_DICOM__PORT": str(dicom_port),
    }
    out = tmp_path / "up.log"
    with out.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flaskmodel", "up", "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    running: dict[int, float] = {}
    try:
        _wait_for_text(out, "FlaskModel is up", proc, 180)
        running = descendants(proc.pid)
        base = f"http://127.0.0.1:{port}"
        assert _get(base + "/readyz")[0] == 200
        if hasattr(os, "SCHED_BATCH"):  # cpu_policy batch: every program inherits it from `up`
            assert {pid: os.sched_getscheduler(pid) for pid in running} == {
                pid: os.SCHED_BATCH for pid in running
            }

        body = json.dumps({"model": "tiny", "inputs": [[0.5] * 32]}).encode()
        request = urllib.request.Request(
            base + "/v1/jobs", data=body, headers={"Content-Type": "application/json"}
        )
        with _opener.open(request, timeout=10) as response:
            assert response.status == 202
            location = urllib.parse.urljoin(base, response.headers["Location"])
        deadline = time.monotonic() + 60
        while True:
            status, job = _get(location)
            assert status == 200, job
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["state"] == "SUCCEEDED", job
        # A CT slice as TF Serving JSON (over 1 MiB) is answered; nginx holds such a body in
        # memory (checked in its log after the stop: no temporary file, so no warning).
        pixels = np.random.default_rng(7).random((1, 256, 256, 1), dtype=np.float32)
        body = json.dumps({"instances": pixels.tolist()}).encode()
        assert len(body) > 1024 * 1024
        request = urllib.request.Request(
            base + "/v1/models/slice:predict",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with _opener.open(request, timeout=60) as response:
            assert response.status == 200
            assert len(json.load(response)["predictions"]) == 1
        # The DICOM front door: C-ECHO on its port, STOW-RS through nginx, a storescu hint.
        echo = ["echoscu", "-aec", "FLASKMODEL", "127.0.0.1", str(dicom_port)]
        assert subprocess.run(echo, capture_output=True, check=False).returncode == 0
        assert f"storescu -xv -aec FLASKMODEL 127.0.0.1 {dicom_port}" in out.read_text()
        sample = next((SAMPLES / CHEST).glob("*.dcm"))
        boundary = "b0undary"
        stow = urllib.request.Request(
            base + "/dicomweb/studies",
            data=f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + sample.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode(),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
            },
        )
        with _opener.open(stow, timeout=30) as response:
            assert response.status == 200
        assert len(list((tmp_path / "data").glob("*/*.dcm"))) == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]
        nginx_log = (run_dir / "logs" / "nginx.log").read_text(errors="replace")
        assert "POST /v1/models/slice:predict" in nginx_log
        assert "buffered to a temporary file" not in nginx_log
    finally:
        if proc.poll() is None:
            running.update(descendants(proc.pid))
            proc.kill()
            proc.wait()
        for pid in _alive(running):
            os.kill(pid, signal.SIGKILL)
    assert _alive(running) == []
    assert _processes_mentioning(str(run_dir)) == []
