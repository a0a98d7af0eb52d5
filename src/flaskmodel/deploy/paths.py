"""Where the rendered stack lives and where the programs it runs are found.

``StackPaths`` names every config, socket, log and data directory of ``flaskmodel up`` under one
run directory; ``stack_paths`` computes them (nothing is written) and ``check_run_dir`` refuses a
run directory the programs could not use. ``tool_path`` and ``nginx_binary`` find executables;
``absolute`` makes the settings' paths independent of the working directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from flaskmodel.settings import Settings

# Linux's sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class StackPaths:
    """Where a rendered foreground stack keeps its configs, sockets, logs and data."""

    run_dir: Path
    log_dir: Path
    supervisord_conf: Path
    supervisor_sock: Path
    supervisord_pid: Path
    supervisord_log: Path
    gunicorn_sock: Path | None
    """gunicorn's unix socket when nginx fronts it; None when gunicorn binds host:port itself."""
    dicom_sock: Path | None
    """The DICOM front door's HTTP (STOW-RS) socket when nginx fronts it; None when the front door
    is off (``dicom.enabled``) or listens on dicom.http_host:http_port itself (no nginx)."""
    redis_conf: Path | None
    """None when the settings name an external Redis."""
    redis_sock: Path | None
    redis_data: Path | None
    redis_password_file: Path | None
    """The generated Redis password (mode 0600) when neither a URL nor a password is set."""
    nginx_conf: Path | None
    """None when the stack runs without nginx."""
    nginx_prefix: Path | None
    programs: tuple[str, ...]
    """supervisord program names in start order (stopped in reverse)."""
    stop_timeout: float
    """Seconds supervisord may need to stop every program (the sum of their stopwaitsecs)."""

    def log_file(self, program: str) -> Path:
        """The log file of one program (stdout and stderr)."""
        return self.log_dir / f"{program}.log"


def stack_paths(settings: Settings, *, use_nginx: bool) -> StackPaths:
    """Where ``render_stack`` puts things for these settings (nothing is written)."""
    run_dir = (Path.cwd() / settings.run_dir).resolve()
    own_redis = not settings.redis.url
    return StackPaths(
        run_dir=run_dir,
        log_dir=run_dir / "logs",
        supervisord_conf=run_dir / "supervisord.conf",
        supervisor_sock=run_dir / "supervisor.sock",
        supervisord_pid=run_dir / "supervisord.pid",
        supervisord_log=run_dir / "logs" / "supervisord.log",
        gunicorn_sock=run_dir / "gunicorn.sock" if use_nginx else None,
        dicom_sock=run_dir / "dicom.sock" if use_nginx and settings.dicom.enabled else None,
        redis_conf=run_dir / "redis.conf" if own_redis else None,
        redis_sock=run_dir / "redis.sock" if own_redis else None,
        redis_data=run_dir / "redis" if own_redis else None,
        redis_password_file=(
            run_dir / "redis.password" if own_redis and not settings.redis.password else None
        ),
        nginx_conf=run_dir / "nginx.conf" if use_nginx else None,
        nginx_prefix=run_dir / "nginx" if use_nginx else None,
        programs=(),
        stop_timeout=0.0,
    )


def check_run_dir(paths: StackPaths) -> None:
    """Raise ValueError when the run directory cannot hold the stack's sockets and logs."""
    sockets = (paths.supervisor_sock, paths.gunicorn_sock, paths.dicom_sock, paths.redis_sock)
    for sock in sockets:
        if sock is not None and len(os.fsencode(sock)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"run directory {paths.run_dir} is too long for unix socket paths "
                f"({sock} > {_MAX_SOCKET_PATH} bytes): choose a shorter FLASKMODEL_RUN_DIR"
            )
    if "%" in f"{paths.run_dir}{Path.cwd()}":
        # supervisord %-expands some values twice (stdout_logfile): no escaping survives that.
        raise ValueError(f"the run and working directories cannot contain '%': {paths.run_dir}")


def absolute(settings: Settings) -> Settings:
    """``settings`` with its paths absolute: the programs may run in another directory."""
    cwd = Path.cwd()
    return settings.model_copy(
        update={
            "run_dir": (cwd / settings.run_dir).resolve(),
            "models_root": (cwd / settings.models_root).resolve(),
            "data_root": (cwd / settings.data_root).resolve(),
        }
    )


def tool_path(name: str) -> Path:
    """An executable beside this interpreter (the virtualenv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} is neither beside {sys.executable} nor on PATH")
    return Path(found)


def system_binary(name: str, usual: Path) -> Path | None:
    """A system program on PATH or at its usual (Debian) location; None when not installed."""
    # sbin is often missing from a user's PATH, so look at the usual location as well.
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    return usual if usual.exists() else None


def nginx_binary() -> Path | None:
    """nginx's executable, or None when nginx is not installed."""
    return system_binary("nginx", Path("/usr/sbin/nginx"))


def address(host: str, port: int) -> str:
    """``host:port`` as gunicorn's --bind and nginx spell it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def user_name() -> str:
    """The name of the user this process runs as."""
    return pwd.getpwuid(os.geteuid()).pw_name
