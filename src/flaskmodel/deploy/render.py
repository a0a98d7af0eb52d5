"""Render FlaskModel's process configs: the foreground stack and the production deploy set.

``render_stack`` writes everything ``flaskmodel up`` runs under one run directory: supervisord's
config (programs redis, worker, web and nginx), redis.conf, gunicorn.conf.py and nginx.conf.
``render_deploy`` writes the files a server install copies into place: gunicorn.conf.py, a
supervisord program file (conf.d) and an nginx site. Templates live in ``templates/`` and use
``@name`` placeholders (``string.Template`` with ``@``, so nginx's own ``$variables`` stay as
they are). Secrets never reach a file: they travel in supervisord's environment instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import resource
import secrets
import shlex
import shutil
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from pydantic import SecretStr

import flaskmodel
from flaskmodel.settings import Settings

logger = logging.getLogger(__name__)

# Linux's sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_MASK = "**********"


class _Template(string.Template):
    delimiter = "@"


@dataclass(frozen=True)
class Program:
    """One supervisord program: what it runs and how it is stopped."""

    name: str
    command: list[str]
    priority: int
    stopwaitsecs: int
    environment: Mapping[str, str] = field(default_factory=dict)
    stopsignal: str = "TERM"
    startsecs: int = 1


@dataclass(frozen=True)
class StackPaths:
    """Where a rendered foreground stack keeps its configs, sockets, logs and data."""

    run_dir: Path
    log_dir: Path
    supervisord_conf: Path
    supervisor_sock: Path
    supervisord_pid: Path
    supervisord_log: Path
    gunicorn_conf: Path
    gunicorn_sock: Path | None
    """gunicorn's unix socket when nginx fronts it; None when gunicorn binds host:port itself."""
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


def tool_path(name: str) -> Path:
    """An executable beside this interpreter (the virtualenv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} is neither beside {sys.executable} nor on PATH")
    return Path(found)


def nginx_binary() -> Path | None:
    """nginx's executable, or None when nginx is not installed."""
    return _system_binary("nginx", Path("/usr/sbin/nginx"))


def _system_binary(name: str, usual: Path) -> Path | None:
    # sbin is often missing from a user's PATH, so look at the Debian location as well.
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    return usual if usual.exists() else None


def split_secrets(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """The settings' env as (plain, secret): secret values (passwords, URLs carrying one)."""
    masked = dict(settings.masked())
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for key, value in settings.env().items():
        (secret if _MASK in masked.get(key, "") else plain)[key] = value
    return plain, secret


def render_stack(settings: Settings, *, use_nginx: bool) -> tuple[StackPaths, Settings]:
    """Write every config of the foreground stack under ``settings.run_dir``.

    Returns the paths and the effective settings the programs get: run_dir, models_root and
    data_root absolute, and ``redis.url`` pointing at our own redis-server's unix socket when
    the settings name no Redis.
    """
    paths = stack_paths(settings, use_nginx=use_nginx)
    _check_run_dir(paths)
    nginx = nginx_binary() if use_nginx else None
    if use_nginx and nginx is None:
        raise FileNotFoundError("nginx is not installed")
    # The sockets inside are this user's only; the data inside survives restarts.
    paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.log_dir.mkdir(exist_ok=True)

    effective = _absolute(settings)
    programs: list[Program] = []
    if paths.redis_conf and paths.redis_sock and paths.redis_data:
        if effective.redis.password is not None:
            password = effective.redis.password.get_secret_value()
        else:
            assert paths.redis_password_file is not None
            password = stack_redis_password(paths.redis_password_file)
        programs.append(
            _redis_program(paths.redis_conf, paths.redis_sock, paths.redis_data, password)
        )
        url = f"unix://{paths.redis_sock}"
        update = {"url": url, "password": SecretStr(password)}
        effective = effective.model_copy(
            update={"redis": effective.redis.model_copy(update=update)}
        )
    env = split_secrets(effective)[0]
    env["PYTHONUNBUFFERED"] = "1"
    # The programs run this interpreter; make sure they import this very flaskmodel.
    package_root = str(Path(flaskmodel.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
    bind = f"unix:{paths.gunicorn_sock}" if paths.gunicorn_sock else None
    programs += _app_programs(effective, env, gunicorn_conf=paths.gunicorn_conf, bind=bind)
    _write(paths.gunicorn_conf, _template("gunicorn.conf.py"))
    if nginx and paths.nginx_conf and paths.nginx_prefix and paths.gunicorn_sock:
        programs.append(
            _nginx_program(
                nginx,
                paths.nginx_conf,
                paths.nginx_prefix,
                effective,
                f"unix:{paths.gunicorn_sock}",
            )
        )

    sections = "\n".join(
        _program_section(p, directory=Path.cwd(), stdout_logfile=paths.log_file(p.name))
        for p in programs
    )
    values = {
        "conf": paths.supervisord_conf,
        "log_dir": paths.log_dir,
        "supervisor_sock": paths.supervisor_sock,
        "supervisord_log": paths.supervisord_log,
        "supervisord_pid": paths.supervisord_pid,
    }
    # As root, naming the user says "stay root" and spares a CRIT line at every start.
    user_line = f"user={_user_name()}" if os.geteuid() == 0 else ""
    _write(
        paths.supervisord_conf,
        _fill(
            "supervisord.conf",
            programs=sections,
            user_line=_sv(user_line),
            **{key: _sv(str(value)) for key, value in values.items()},
        ),
    )
    final = replace(
        paths,
        programs=tuple(p.name for p in programs),
        stop_timeout=float(sum(p.stopwaitsecs for p in programs) + 15),
    )
    logger.info(
        "rendered stack configs in %s (programs: %s)", paths.run_dir, ", ".join(final.programs)
    )
    return final, effective


def render_deploy(settings: Settings, out_dir: Path) -> list[Path]:
    """Write the production set into ``out_dir``: gunicorn.conf.py, a supervisord program file
    (for /etc/supervisor/conf.d) and an nginx site (for /etc/nginx/sites-available).

    nginx listens on port 80 and proxies to gunicorn on 127.0.0.1:<web.port> (or balances over
    the web hosts of ``web.upstreams``, each running ``flaskmodel serve``); Redis is the
    deployment's own (FLASKMODEL_REDIS__URL). Commands name this interpreter's virtualenv, so
    render on the host from the installed virtualenv. No secret is written.
    """
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    effective = _absolute(settings)
    env, secret = split_secrets(effective)
    env["PYTHONUNBUFFERED"] = "1"
    needed = sorted(set(secret) | ({"FLASKMODEL_REDIS__URL"} - set(env)))
    gunicorn_conf = out_dir / "gunicorn.conf.py"
    upstream = _address("127.0.0.1", effective.web.port)
    programs = _app_programs(
        effective, env, gunicorn_conf=gunicorn_conf, bind=upstream, prefix="flaskmodel-"
    )
    sections = "\n".join(
        _program_section(p, directory=Path("/"), stdout_logfile="AUTO", maxbytes="50MB", backups=10)
        for p in programs
    )
    supervisor_conf = out_dir / "supervisord-flaskmodel.conf"
    site = out_dir / "nginx-flaskmodel.conf"
    _write(gunicorn_conf, _template("gunicorn.conf.py"))
    names = ", ".join(needed) or "none"
    _write(supervisor_conf, _fill("supervisord-deploy.conf", programs=sections, secret_names=names))
    upstreams = effective.web.upstreams or [upstream]
    _write(site, _site(effective, upstreams=upstreams, listen="80"))
    logger.info("rendered deploy files in %s", out_dir)
    return [gunicorn_conf, supervisor_conf, site]


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
        gunicorn_conf=run_dir / "gunicorn.conf.py",
        gunicorn_sock=run_dir / "gunicorn.sock" if use_nginx else None,
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


def _app_programs(
    settings: Settings,
    env: Mapping[str, str],
    *,
    gunicorn_conf: Path,
    bind: str | None,
    prefix: str = "",
) -> list[Program]:
    """The worker and web programs (both read their settings from ``env``)."""
    web = [str(tool_path("gunicorn")), "-c", str(gunicorn_conf)]
    if bind is not None:
        web += ["--bind", bind]
    else:  # gunicorn faces clients itself: no nginx access log records them
        web.append("--access-logfile=-")
    web.append("flaskmodel.web:create_app()")
    return [
        # Celery's warm shutdown lets the running job finish; only after its hard time limit
        # (plus slack) may supervisord SIGKILL the group.
        Program(
            f"{prefix}worker",
            [sys.executable, "-m", "flaskmodel", "worker"],
            priority=20,
            stopwaitsecs=settings.jobs.time_limit + 30,
            environment=env,
            startsecs=5,
        ),
        Program(
            f"{prefix}web",
            web,
            priority=30,
            stopwaitsecs=settings.web.graceful_timeout + 10,
            environment=env,
            startsecs=3,
        ),
    ]


def _program_section(
    program: Program,
    *,
    directory: Path,
    stdout_logfile: Path | str,
    maxbytes: str = "10MB",
    backups: int = 3,
) -> str:
    return _fill(
        "supervisord-program.conf",
        name=program.name,
        command=_sv(shlex.join(program.command)),
        directory=_sv(str(directory)),
        priority=str(program.priority),
        startsecs=str(program.startsecs),
        stopsignal=program.stopsignal,
        stopwaitsecs=str(program.stopwaitsecs),
        stdout_logfile=_sv(str(stdout_logfile)),
        logfile_maxbytes=maxbytes,
        logfile_backups=str(backups),
        environment=_sv_environment(program.environment),
    )


def stack_redis_password(path: Path) -> str:
    """The stack's Redis password from ``path`` (mode 0600), generated there on first use and
    kept for later runs (so ``redis-cli`` users can read it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        password = path.read_text("utf-8").strip()
        if len(password) >= 32:
            return password
        logger.warning("%s holds no usable password; generating a new one", path)
        path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    password = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(password + "\n")
    return password


def _redis_program(conf: Path, sock: Path, data_dir: Path, password: str) -> Program:
    data_dir.mkdir(exist_ok=True)
    # Only the password's SHA-256 is written (Redis ACL's '#<hash>' form); the password reaches
    # the programs through supervisord's environment.
    digest = hashlib.sha256(password.encode()).hexdigest()
    _write(
        conf,
        _fill(
            "redis.conf",
            socket=_redis_quote(sock),
            data_dir=_redis_quote(data_dir),
            password_sha256=digest,
        ),
    )
    redis_server = _system_binary("redis-server", Path("/usr/bin/redis-server"))
    if redis_server is None:
        raise FileNotFoundError(
            "redis-server is not installed: install it or set FLASKMODEL_REDIS__URL"
        )
    return Program("redis", [str(redis_server), str(conf)], priority=10, stopwaitsecs=30)


def _nginx_program(
    nginx: Path, conf: Path, prefix: Path, settings: Settings, upstream: str
) -> Program:
    prefix.mkdir(exist_ok=True)
    site = prefix / "flaskmodel.conf"
    listen = _address(settings.web.host, settings.web.port)
    _write(site, _site(settings, upstreams=[upstream], listen=listen))
    _write(conf, _nginx_main(prefix, site))
    return Program(
        "nginx",
        [str(nginx), "-e", "stderr", "-p", str(prefix), "-c", str(conf)],
        priority=40,
        # QUIT is nginx's graceful stop: in-flight requests finish, idle connections close.
        stopsignal="QUIT",
        stopwaitsecs=settings.web.graceful_timeout + 10,
    )


def _check_run_dir(paths: StackPaths) -> None:
    for sock in (paths.supervisor_sock, paths.gunicorn_sock, paths.redis_sock):
        if sock is not None and len(os.fsencode(sock)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"run directory {paths.run_dir} is too long for unix socket paths "
                f"({sock} > {_MAX_SOCKET_PATH} bytes): choose a shorter FLASKMODEL_RUN_DIR"
            )
    if "%" in f"{paths.run_dir}{Path.cwd()}":
        # supervisord %-expands some values twice (stdout_logfile): no escaping survives that.
        raise ValueError(f"the run and working directories cannot contain '%': {paths.run_dir}")


def _absolute(settings: Settings) -> Settings:
    """``settings`` with its paths absolute: the programs may run in another directory."""
    cwd = Path.cwd()
    return settings.model_copy(
        update={
            "run_dir": (cwd / settings.run_dir).resolve(),
            "models_root": (cwd / settings.models_root).resolve(),
            "data_root": (cwd / settings.data_root).resolve(),
        }
    )


def _site(settings: Settings, *, upstreams: list[str], listen: str) -> str:
    return _fill(
        "flaskmodel.conf",
        servers=_upstream_servers(upstreams),
        listen=listen,
        max_body=str(settings.web.max_request_bytes),
        header_timeout=_nginx_seconds(settings.web.client_header_timeout),
        body_timeout=_nginx_seconds(settings.web.client_body_timeout),
        read_timeout=f"{settings.jobs.time_limit + 30}s",
        metrics_location=_metrics_location(settings.metrics.allow),
    )


def _metrics_location(allow: list[str]) -> str:
    """``/metrics`` for the ``metrics.allow`` addresses only; nothing (public) when empty."""
    if not allow:
        return ""
    rules = "".join(f"        allow {entry};\n" for entry in allow)
    return (
        "\n    # metrics.allow: only these addresses may scrape /metrics.\n"
        "    location = /metrics {\n"
        f"{rules}"
        "        deny all;\n"
        "        proxy_pass http://flaskmodel_web;\n"
        "    }\n"
    )


def _nginx_seconds(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _upstream_servers(servers: list[str]) -> str:
    """The upstream block's server lines: one gunicorn, or several web hosts balanced by least
    connections; a host that fails 3 times within 5 s is skipped for 5 s (a request that
    cannot connect goes to the next host at once)."""
    if len(servers) == 1:
        return f"    server {servers[0]} fail_timeout=0;"
    lines = ["    least_conn;"]
    lines += [f"    server {server} max_fails=3 fail_timeout=5s;" for server in servers]
    return "\n".join(lines)


def _nginx_main(prefix: Path, site: Path) -> str:
    # A root master would start its workers as "nobody", who cannot reach the gunicorn socket
    # in this user's 0700 run directory: keep the workers as the invoking user.
    user_line = f"user {_user_name()};" if os.geteuid() == 0 else ""
    soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_nofile == resource.RLIM_INFINITY:
        soft_nofile = 65536
    return _fill(
        "nginx.conf",
        prefix=str(prefix),
        site=str(site),
        user_line=user_line,
        worker_processes=str(min(os.cpu_count() or 1, 4)),
        # Each proxied request holds two descriptors; stay inside the open-file limit.
        worker_connections=str(max(512, min(8192, soft_nofile - 64))),
    )


def _user_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _template(name: str) -> str:
    return resources.files("flaskmodel.deploy").joinpath("templates", name).read_text("utf-8")


def _fill(template: str, /, **values: str) -> str:
    return _Template(_template(template)).substitute(values)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _sv(value: str) -> str:
    """A value for supervisord's config, which %-expands every value."""
    if "\n" in value:
        raise ValueError(f"supervisord config values cannot hold newlines: {value!r}")
    return value.replace("%", "%%")


def _sv_environment(env: Mapping[str, str]) -> str:
    """supervisord's ``environment=`` syntax: KEY="value",... (no escapes exist inside quotes)."""
    items = []
    for key, value in env.items():
        quote = "'" if '"' in value else '"'
        if quote in value or value.endswith(("'", '"')) or "\n" in value:
            raise ValueError(f"{key} cannot be passed through supervisord: {value!r}")
        items.append(f"{key}={quote}{_sv(value)}{quote}")
    return ",".join(items)


def _redis_quote(path: Path) -> str:
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
