"""Starting and stopping the real processes tests talk to (redis-server, worker, and gunicorn by
`flaskmodel serve`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from flaskmodel.settings import Settings

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except (OSError, redis.RedisError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def start_redis(
    workdir: Path, port: int | None = None, *, appendonly: bool = False, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
        # One database per test module that needs its own (more than Redis's default 16).
        "--databases",
        "32",
        *extra,
    ]
    proc = subprocess.Popen(args)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    wait_for(lambda: bool(client.ping()), 10, "redis-server", proc)
    client.close()
    return proc, url


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def spawn(args: list[str], settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")}
    env.update(settings.env())
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_worker(settings: Settings, log: Path, timeout: float = 120) -> subprocess.Popen[bytes]:
    """A real ``flaskmodel worker``; returns once its heartbeat says ready."""
    from flaskmodel.storage.redis import connect  # noqa: PLC0415
    from flaskmodel.storage.workers import WorkerRegistry  # noqa: PLC0415

    client = connect(settings)
    registry = WorkerRegistry(client, ttl=settings.worker.heartbeat_seconds * 3)
    before = {w.worker_id for w in registry.live()}
    proc = spawn([sys.executable, "-m", "flaskmodel", "worker"], settings, log)

    def ready() -> bool:
        return any(w.ready and w.worker_id not in before for w in registry.live())

    try:
        wait_for(ready, timeout, f"worker ready (log: {log})", proc)
    except (RuntimeError, TimeoutError):
        stop(proc)
        raise RuntimeError(f"worker did not get ready:\n{log.read_text()[-3000:]}") from None
    finally:
        client.close()
    return proc


def start_gunicorn(
    settings: Settings,
    log: Path,
    port: int,
    workers: int = 1,
    *,
    graceful_timeout: int = 5,
    access_log: bool = False,
) -> subprocess.Popen[bytes]:
    """The web tier as users start it, ``flaskmodel serve`` (which becomes gunicorn, same pid),
    on 127.0.0.1:``port``; returns once ``/healthz`` answers.

    ``graceful_timeout`` replaces web.graceful_timeout: a test stopping gunicorn while a client
    holds an idle kept-alive connection waits that long."""
    import requests  # noqa: PLC0415

    web = settings.web.model_copy(update={"graceful_timeout": graceful_timeout})
    args = [
        str(VENV_BIN / "flaskmodel"),
        "serve",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--workers={workers}",
        "--access-log" if access_log else "--no-access-log",
    ]
    proc = spawn(args, settings.model_copy(update={"web": web}), log)
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        wait_for(lambda: requests.get(url, timeout=1).ok, 30, "gunicorn", proc)
    except (RuntimeError, TimeoutError):
        stop(proc)
        raise RuntimeError(f"gunicorn did not start:\n{log.read_text()[-3000:]}") from None
    return proc


def queued(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a Celery queue on the Redis broker, every priority list counted."""
    from flaskmodel.jobs.broker import redis_queue_keys  # noqa: PLC0415

    return sum(int(client.llen(name)) for name in redis_queue_keys(queue))


def start_dicom(settings: Settings, log: Path, timeout: float = 30) -> subprocess.Popen[bytes]:
    """The DICOM front door as users start it, ``flaskmodel dicom``, on ``dicom.port`` (DICOM)
    and ``dicom.http_host:http_port`` (STOW-RS); returns once both answer."""
    import requests  # noqa: PLC0415

    proc = spawn([str(VENV_BIN / "flaskmodel"), "dicom"], settings, log)
    dicom = settings.dicom
    url = f"http://{dicom.http_host}:{dicom.http_port}/dicomweb/healthz"

    def answers() -> bool:
        echo = subprocess.run(
            ["echoscu", "-aec", dicom.ae_title, "127.0.0.1", str(dicom.port)],
            capture_output=True,
            check=False,
        )
        return echo.returncode == 0 and requests.get(url, timeout=1).ok

    try:
        wait_for(answers, timeout, "flaskmodel dicom", proc)
    except (RuntimeError, TimeoutError):
        stop(proc)
        raise RuntimeError(f"flaskmodel dicom did not start:\n{log.read_text()[-3000:]}") from None
    return proc
