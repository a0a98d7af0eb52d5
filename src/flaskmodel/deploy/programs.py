"""What the stack and the deploy set run under supervisord: the worker, the DICOM front door and
the web tier (``gunicorn_launch``'s command), with the environment they read their settings from.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flaskmodel.deploy.gunicorn_launch import gunicorn_command
from flaskmodel.deploy.paths import tool_path
from flaskmodel.settings import Settings

_MASK = "**********"


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


def split_secrets(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """The settings' env as (plain, secret): secret values (passwords, URLs carrying one)."""
    masked = dict(settings.masked())
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for key, value in settings.env().items():
        (secret if _MASK in masked.get(key, "") else plain)[key] = value
    return plain, secret


def app_programs(
    settings: Settings,
    env: Mapping[str, str],
    *,
    bind: str | None,
    access_log: bool,
    dicom_sock: Path | None,
    prefix: str = "",
) -> list[Program]:
    """The worker, dicom and web programs (all read their settings from ``env``).

    Without ``dicom_sock`` the DICOM front door's HTTP listener binds dicom.http_host:http_port."""
    programs = [
        # Celery's warm shutdown lets the running job finish; only after its hard time limit
        # (plus slack) may supervisord SIGKILL the group.
        Program(
            f"{prefix}worker",
            [sys.executable, "-m", "flaskmodel", "worker"],
            priority=20,
            stopwaitsecs=settings.jobs.time_limit + 30,
            environment=env,
            startsecs=5,
        )
    ]
    if settings.dicom.enabled:
        dicom = [str(tool_path("flaskmodel")), "dicom"]
        if dicom_sock is not None:
            dicom += ["--http-socket", str(dicom_sock)]
        programs.append(
            Program(
                f"{prefix}dicom",
                dicom,
                priority=25,
                stopwaitsecs=settings.web.graceful_timeout + 10,
                environment=env,
                startsecs=3,
            )
        )
    programs.append(
        Program(
            f"{prefix}web",
            gunicorn_command(settings, bind=bind, access_log=access_log),
            priority=30,
            stopwaitsecs=settings.web.graceful_timeout + 10,
            environment=env,
            startsecs=3,
        )
    )
    return programs
