"""``flaskmodel up``: the whole stack (redis, worker, DICOM front door, gunicorn, nginx) under
supervisord, in the foreground, until SIGTERM or Ctrl-C.

``run_stack`` renders the configs (``flaskmodel.deploy.supervisor_conf``), starts supervisord in
its own process group (so a terminal's Ctrl-C reaches only us and we stop things in order), waits
for ``/readyz``, announces the URL, and on a signal stops supervisord, which stops its programs in
reverse priority. Whatever is still alive after the stop deadline is killed, down to the last
descendant, so no process outlives the stack.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from types import FrameType
from typing import Any, cast

import click
from supervisor.xmlrpc import SupervisorTransport

from flaskmodel.deploy.paths import StackPaths, nginx_binary, stack_paths, tool_path
from flaskmodel.deploy.processes import descendants, kill_processes
from flaskmodel.deploy.programs import split_secrets
from flaskmodel.deploy.supervisor_conf import render_stack
from flaskmodel.scheduling import apply_cpu_policy
from flaskmodel.settings import Settings

logger = logging.getLogger(__name__)

_POLL = 0.25
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
# Direct connections only: a configured HTTP proxy must not see requests to our own loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run_stack(
    settings: Settings,
    *,
    port: int | None = None,
    ready_timeout: float = 180.0,
    announce: Callable[[str], None] = click.echo,
    samples: str = "",
) -> int:
    """Run the stack in the foreground; the exit code: 0 after a requested stop, 1 when it failed
    (not ready in time, supervisord died), 2 when it could not start (port taken, stack running).
    ``port`` overrides ``web.port`` (0 picks a free one). ``samples`` (``{base}`` is the stack's
    URL) is announced once the stack is ready: requests a user can try."""
    if port is not None:
        settings = settings.model_copy(
            update={"web": settings.web.model_copy(update={"port": port})}
        )
    host = settings.web.host
    if settings.web.port == 0:
        settings = settings.model_copy(
            update={"web": settings.web.model_copy(update={"port": free_port(host)})}
        )
    use_nginx = nginx_binary() is not None
    planned = stack_paths(settings, use_nginx=use_nginx)
    if supervisor_alive(planned):
        announce(
            f"cannot start: a stack already runs in {planned.run_dir} "
            f"(supervisorctl -c {planned.supervisord_conf} status)"
        )
        return 2
    problem = port_problem(host, settings.web.port)
    if problem is not None:
        announce(f"cannot start: {problem}; choose another with --port or FLASKMODEL_WEB__PORT")
        return 2
    try:
        paths, effective = render_stack(settings, use_nginx=use_nginx)
    except (OSError, ValueError) as exc:
        announce(f"cannot start: {exc}")
        return 2
    base = f"http://{_connect_address(host, effective.web.port)}"
    announce(
        f"starting FlaskModel in {paths.run_dir} ({', '.join(paths.programs)}); "
        f"logs in {paths.log_dir}"
    )
    apply_cpu_policy(settings.cpu_policy)  # every program of the stack inherits it
    with _StopSignals() as signals:
        try:
            proc = start_supervisor(paths, effective)
        except OSError as exc:
            announce(f"cannot start supervisord: {exc}")
            return 2
        tracked: dict[int, float] = {}
        rc = 1
        try:
            rc = _supervise(
                proc,
                paths,
                base=base,
                signals=signals,
                tracked=tracked,
                ready_timeout=ready_timeout,
                announce=announce,
                samples=samples,
            )
        finally:
            if not stop_supervisor(proc, paths, known=tracked, hurry=signals.hurry):
                rc = rc or 1
    announce("stopped" if rc == 0 else f"stopped (exit code {rc})")
    return rc


def _supervise(
    proc: subprocess.Popen[bytes],
    paths: StackPaths,
    *,
    base: str,
    signals: _StopSignals,
    tracked: dict[int, float],
    ready_timeout: float,
    announce: Callable[[str], None],
    samples: str,
) -> int:
    """Wait for readiness, announce, then block until a stop signal or supervisord's death."""
    deadline = time.monotonic() + ready_timeout
    last_scan = 0.0
    ready = False
    while not signals.stop.is_set():
        if time.monotonic() - last_scan > 2.0:
            # Remember the programs' processes in case supervisord dies and leaves them orphaned.
            tracked.update(descendants(proc.pid))
            last_scan = time.monotonic()
        if proc.poll() is not None:
            announce(
                f"supervisord exited unexpectedly (code {proc.returncode}); "
                f"see {paths.supervisord_log}"
            )
            announce(_tail(paths.supervisord_log))
            return 1
        if not ready:
            ok, answer = _probe(base + "/readyz")
            fatal = [] if ok else [n for n, st in program_states(paths).items() if st == "FATAL"]
            if fatal:
                # supervisord gave up restarting it: waiting longer cannot help.
                announce(f"{', '.join(fatal)} could not start; stopping")
                announce(diagnose(paths))
                return 1
            if ok:
                ready = True
                tracked.update(descendants(proc.pid))
                announce(f"FlaskModel is up: {base}")
                if samples:
                    announce("try:  " + samples.format(base=base))
                announce("stop with Ctrl-C")
            elif time.monotonic() > deadline:
                announce(f"not ready after {ready_timeout:.0f} s; {base}/readyz: {answer}")
                announce(diagnose(paths))
                return 1
        signals.stop.wait(_POLL if not ready else 0.5)
    announce("stopping FlaskModel (Ctrl-C again to kill it at once) ...")
    return 0


def start_supervisor(paths: StackPaths, settings: Settings) -> subprocess.Popen[bytes]:
    """Start supervisord on the rendered config, in its own process group.

    It inherits this environment minus any FLASKMODEL_* (the config's ``environment=`` lines are
    the settings), plus the secret settings, which are never written to a file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")}
    env.update(split_secrets(settings)[1])
    cmd = [str(tool_path("supervisord")), "-c", str(paths.supervisord_conf)]
    logger.info("starting %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, process_group=0)


def stop_supervisor(
    proc: subprocess.Popen[bytes],
    paths: StackPaths,
    *,
    timeout: float | None = None,
    known: dict[int, float] | None = None,
    hurry: threading.Event | None = None,
) -> bool:
    """Stop supervisord and with it every program; True when all stopped in time on their own.

    SIGTERM makes supervisord stop its programs in reverse priority, each within its
    stopwaitsecs. Past ``timeout`` (default ``paths.stop_timeout``), or once ``hurry`` is set,
    supervisord is frozen, its descendants listed, and all of them killed. ``known`` (pid →
    start time) names processes seen earlier: killed too if still alive."""
    seen = dict(known or {})
    clean = True
    if proc.poll() is None:
        seen.update(descendants(proc.pid))
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + (paths.stop_timeout if timeout is None else timeout)
        while proc.poll() is None and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set():
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_POLL)
        if proc.poll() is None:
            logger.warning("supervisord did not stop in time; killing the stack")
            clean = False
            with contextlib.suppress(ProcessLookupError):
                # Frozen, it cannot restart a program between the listing and the kill.
                proc.send_signal(signal.SIGSTOP)
                seen.update(descendants(proc.pid))
                proc.kill()
            proc.wait()
    else:
        clean = False
    # After a clean stop, a pool child may still be finishing its exit: give it a moment.
    leftovers = kill_processes(seen, grace=2.0 if clean else 0.0)
    if leftovers:
        logger.warning("killed %d leftover process(es) of the stack: %s", len(leftovers), leftovers)
    logger.info("supervisord exited with code %s", proc.returncode)
    return clean and not leftovers and proc.returncode == 0


def program_states(paths: StackPaths) -> dict[str, str]:
    """Each program's supervisord state (STARTING, RUNNING, BACKOFF, FATAL, ...), asked over
    the unix socket; empty while supervisord does not answer."""
    transport = SupervisorTransport(serverurl=f"unix://{paths.supervisor_sock}")
    proxy = xmlrpc.client.ServerProxy("http://localhost", transport=transport)
    try:
        # XML-RPC's return type is any marshallable value; this call returns a list of structs.
        infos = cast("list[dict[str, Any]]", proxy.supervisor.getAllProcessInfo())
    except (OSError, HTTPException, xmlrpc.client.Error):
        return {}
    finally:
        transport.close()
    return {str(info["name"]): str(info["statename"]) for info in infos}


def supervisor_alive(paths: StackPaths) -> bool:
    """Whether a supervisord answers on this run directory's socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(paths.supervisor_sock))
        except OSError:
            return False
    return True


def diagnose(paths: StackPaths, lines: int = 20) -> str:
    """``supervisorctl status`` and the log tail of every program that is not RUNNING."""
    try:
        out = subprocess.run(
            [str(tool_path("supervisorctl")), "-c", str(paths.supervisord_conf), "status"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"supervisorctl status failed: {exc}\n{_tail(paths.supervisord_log, lines)}"
    parts = [out.rstrip()]
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in paths.programs and fields[1] != "RUNNING":
            log = paths.log_file(fields[0])
            parts.append(f"--- {fields[0]} ({fields[1]}): last lines of {log}\n{_tail(log, lines)}")
    return "\n".join(parts)


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now, or None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: connections in TIME_WAIT do not make a port "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"{_connect_address(host, port)} is not available ({exc.strerror or exc})"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _probe(url: str) -> tuple[bool, str]:
    """(whether ``url`` answers 200, what it answered) — the answer explains a failed start."""
    try:
        with _opener.open(url, timeout=2.0) as response:
            return response.status == 200, f"{response.status} {response.read(500)!r}"
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code} {exc.read(500)!r}"
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        return False, str(exc)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _connect_address(host: str, port: int) -> str:
    """Where a client on this machine reaches ``host:port`` (wildcards become loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _StopSignals:
    """SIGINT/SIGTERM/SIGHUP set ``stop``; a second one sets ``hurry`` (kill instead of wait).

    Installed only in the main thread (Python delivers signals there); elsewhere a no-op."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self._previous: dict[signal.Signals, _Handler] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()
        logger.info("received %s", signal.Signals(signum).name)

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self._SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
