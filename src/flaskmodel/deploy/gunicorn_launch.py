"""The one way FlaskModel starts gunicorn: ``flaskmodel serve``, the ``web`` program of the stack
and of the deploy set, and the tests all run the command built here.

The command always loads the packaged config, ``flaskmodel.deploy.gunicorn_config``: gevent
workers; workers, connections and timeouts from the settings; a keep-alive longer than nginx's
upstream ``keepalive_timeout`` (gunicorn's own 2 s default makes an nginx that reuses idle
upstream connections answer 502s); the SIGTERM drain hook and the heap freeze after the app is
loaded (``gunicorn_hooks``). That config reads the settings from the ``FLASKMODEL_*``
environment, so the process gets ``settings.env()`` (``exec_gunicorn`` passes it; supervisord
passes it through ``environment=`` plus, for secrets, its own environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

from flaskmodel.deploy.paths import address, tool_path
from flaskmodel.settings import Settings

CONFIG = "python:flaskmodel.deploy.gunicorn_config"
"""gunicorn's ``--config`` for the packaged config (imported from the installed package)."""
WSGI_APP = "flaskmodel.web:create_app()"
KEEPALIVE_SECONDS = 75
"""gunicorn keeps an idle connection this long: longer than nginx's upstream keepalive_timeout
(``nginx_conf.UPSTREAM_KEEPALIVE_SECONDS``), so nginx, never gunicorn, closes an idle connection;
otherwise nginx may reuse one that gunicorn is closing and answer 502."""


def gunicorn_command(
    settings: Settings, *, bind: str | None = None, access_log: bool = False
) -> list[str]:
    """The argv that runs FlaskModel's web tier with these settings.

    ``bind`` is gunicorn's ``--bind`` (``host:port`` or ``unix:<path>``; default
    web.host:web.port). ``access_log`` writes a line per request to stdout: for a gunicorn that
    faces clients itself; behind nginx, nginx's access log already records every request. The
    environment must carry ``settings.env()`` (see ``gunicorn_env``)."""
    argv = [
        str(tool_path("gunicorn")),
        f"--config={CONFIG}",
        f"--bind={bind or address(settings.web.host, settings.web.port)}",
    ]
    if access_log:
        argv.append("--access-logfile=-")
    argv.append(WSGI_APP)
    return argv


def gunicorn_env(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (e.g. ``os.environ``) with its ``FLASKMODEL_*`` replaced by ``settings.env()``."""
    env = {key: value for key, value in base.items() if not key.startswith("FLASKMODEL_")}
    env.update(settings.env())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def exec_gunicorn(
    settings: Settings, *, bind: str | None = None, access_log: bool = False
) -> NoReturn:
    """Replace this process with gunicorn (``gunicorn_command``); the pid stays the same, so a
    process manager's signals reach gunicorn's master directly."""
    argv = gunicorn_command(settings, bind=bind, access_log=access_log)
    os.execve(argv[0], argv, gunicorn_env(settings, os.environ))
