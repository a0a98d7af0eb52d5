"""supervisord's configs: the foreground stack's supervisord.conf and the deploy set's files.

``render_stack`` writes everything ``flaskmodel up`` runs under one run directory: supervisord.conf
with the programs redis, worker, dicom (when ``dicom.enabled``), web and nginx, plus redis.conf
(``redis_conf``) and nginx.conf with its site (``nginx_conf``). ``render_deploy`` writes what a
server install copies into place: a supervisord program file (conf.d) and an nginx site. What the
programs run is ``programs``'s (the web program is ``gunicorn_launch``'s command, like every other
start of gunicorn). Secrets never reach a file: they travel in supervisord's environment instead.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from pydantic import SecretStr

import flaskmodel
from flaskmodel.deploy.files import fill, write
from flaskmodel.deploy.nginx_conf import deploy_site, write_stack_nginx
from flaskmodel.deploy.paths import (
    StackPaths,
    absolute,
    address,
    check_run_dir,
    nginx_binary,
    stack_paths,
    user_name,
)
from flaskmodel.deploy.programs import Program, app_programs, split_secrets
from flaskmodel.deploy.redis_conf import stack_redis_password, write_redis_conf
from flaskmodel.settings import Settings

logger = logging.getLogger(__name__)


def render_stack(settings: Settings, *, use_nginx: bool) -> tuple[StackPaths, Settings]:
    """Write every config of the foreground stack under ``settings.run_dir``.

    Returns the paths and the effective settings the programs get: run_dir, models_root and
    data_root absolute, and ``redis.url`` pointing at our own redis-server's unix socket when
    the settings name no Redis.
    """
    paths = stack_paths(settings, use_nginx=use_nginx)
    check_run_dir(paths)
    nginx = nginx_binary() if use_nginx else None
    if use_nginx and nginx is None:
        raise FileNotFoundError("nginx is not installed")
    # The sockets inside are this user's only; the data inside survives restarts.
    paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.log_dir.mkdir(exist_ok=True)

    effective = absolute(settings)
    programs: list[Program] = []
    if paths.redis_conf and paths.redis_sock and paths.redis_data:
        if effective.redis.password is not None:
            password = effective.redis.password.get_secret_value()
        else:
            assert paths.redis_password_file is not None
            password = stack_redis_password(paths.redis_password_file)
        command = write_redis_conf(
            paths.redis_conf, sock=paths.redis_sock, data_dir=paths.redis_data, password=password
        )
        programs.append(Program("redis", command, priority=10, stopwaitsecs=30))
        update = {"url": f"unix://{paths.redis_sock}", "password": SecretStr(password)}
        effective = effective.model_copy(
            update={"redis": effective.redis.model_copy(update=update)}
        )
    env = split_secrets(effective)[0]
    env["PYTHONUNBUFFERED"] = "1"
    # The programs run this interpreter; make sure they import this very flaskmodel.
    package_root = str(Path(flaskmodel.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
    # Behind nginx gunicorn binds a unix socket and nginx logs access; alone it faces clients.
    bind = f"unix:{paths.gunicorn_sock}" if paths.gunicorn_sock else None
    programs += app_programs(
        effective, env, bind=bind, access_log=bind is None, dicom_sock=paths.dicom_sock
    )
    if nginx and paths.nginx_conf and paths.nginx_prefix and paths.gunicorn_sock:
        command = write_stack_nginx(
            nginx,
            effective,
            conf=paths.nginx_conf,
            prefix=paths.nginx_prefix,
            gunicorn_sock=paths.gunicorn_sock,
            dicom_sock=paths.dicom_sock,
        )
        # QUIT is nginx's graceful stop: in-flight requests finish, idle connections close.
        stopwaitsecs = effective.web.graceful_timeout + 10
        programs.append(Program("nginx", command, 40, stopwaitsecs, stopsignal="QUIT"))

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
    user_line = f"user={user_name()}" if os.geteuid() == 0 else ""
    write(
        paths.supervisord_conf,
        fill(
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
    """Write the production set into ``out_dir``: a supervisord program file (for
    /etc/supervisor/conf.d) and an nginx site (for /etc/nginx/sites-available).

    nginx listens on port 80 and proxies to gunicorn on 127.0.0.1:<web.port> (or balances over
    the web hosts of ``web.upstreams``, each running ``flaskmodel serve``), and ``/dicomweb/`` to
    the DICOM front door on dicom.http_host:http_port; Redis is the deployment's own
    (FLASKMODEL_REDIS__URL). Commands name this interpreter's virtualenv, so render on the host
    from the installed virtualenv. No secret is written.
    """
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    effective = absolute(settings)
    env, secret = split_secrets(effective)
    env["PYTHONUNBUFFERED"] = "1"
    needed = sorted(set(secret) | ({"FLASKMODEL_REDIS__URL"} - set(env)))
    upstream = address("127.0.0.1", effective.web.port)
    programs = app_programs(
        effective, env, bind=upstream, access_log=False, dicom_sock=None, prefix="flaskmodel-"
    )
    sections = "\n".join(
        _program_section(p, directory=Path("/"), stdout_logfile="AUTO", maxbytes="50MB", backups=10)
        for p in programs
    )
    supervisor_conf = out_dir / "supervisord-flaskmodel.conf"
    site = out_dir / "nginx-flaskmodel.conf"
    names = ", ".join(needed) or "none"
    write(supervisor_conf, fill("supervisord-deploy.conf", programs=sections, secret_names=names))
    dicom = effective.dicom
    front_door = address(dicom.http_host, dicom.http_port) if dicom.enabled else None
    upstreams = effective.web.upstreams or [upstream]
    write(site, deploy_site(effective, upstreams=upstreams, dicom=front_door))
    logger.info("rendered deploy files in %s", out_dir)
    return [supervisor_conf, site]


def _program_section(
    program: Program,
    *,
    directory: Path,
    stdout_logfile: Path | str,
    maxbytes: str = "10MB",
    backups: int = 3,
) -> str:
    return fill(
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
