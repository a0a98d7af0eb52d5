"""The ``flaskmodel`` command: up, serve, worker, demo, check, deploy, submit."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from flaskmodel.logs import configure
from flaskmodel.settings import Settings, settings_table

logger = logging.getLogger(__name__)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc


@click.group()
def main() -> None:
    """FlaskModel: serve TensorFlow models over HTTP with Celery workers and Redis."""


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's configuration table instead.")
def check(markdown: bool) -> None:
    """Print the resolved settings (secrets masked)."""
    if markdown:
        click.echo(settings_table(), nl=False)
        return
    settings = load_settings()
    for name, value in settings.masked():
        click.echo(f"{name}={value}")


@main.command()
@click.option(
    "--ct-size", default=256, show_default=True, help="Input height/width of ct_classifier."
)
@click.option("--force", is_flag=True, help="Rebuild even when the assets exist.")
def demo(ct_size: int, force: bool) -> None:
    """Build the demo models and the demo CT series (offline, deterministic)."""
    settings = load_settings()
    configure(settings)
    from flaskmodel.demo import build_demo  # noqa: PLC0415 - imports TensorFlow

    for line in build_demo(settings.models_root, settings.data_root, ct_size=ct_size, force=force):
        click.echo(line)


@main.command()
def worker() -> None:
    """Run a Celery worker (models load in each pool process after fork)."""
    settings = load_settings()
    configure(settings)
    from flaskmodel.worker.main import run_worker  # noqa: PLC0415

    try:
        run_worker(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--port", type=int, default=None, help="Port to bind (default: web.port).")
def serve(port: int | None) -> None:
    """Run the web tier under gunicorn with gevent workers."""
    settings = load_settings()
    try:
        settings.redis_url()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    bind = f"{settings.web.host}:{port or settings.web.port}"
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    env = {**os.environ, **settings.env()}
    args = [
        gunicorn,
        "--worker-class=gevent",
        f"--workers={settings.web.workers}",
        f"--worker-connections={settings.web.worker_connections}",
        f"--graceful-timeout={settings.web.graceful_timeout}",
        f"--bind={bind}",
        "--access-logfile=-",
        "flaskmodel.web:create_app()",
    ]
    os.execve(gunicorn, args, env)


@main.command()
@click.option("--port", type=int, default=None, help="Public port (default: web.port).")
def up(port: int | None) -> None:
    """Start the whole stack (redis, worker, gunicorn, nginx) in the foreground."""
    settings = load_settings()
    configure(settings)
    from flaskmodel.stack import run_stack  # noqa: PLC0415

    sys.exit(run_stack(settings, port=port, announce=click.echo))


@main.group()
def deploy() -> None:
    """Production deployment files."""


@deploy.command("render")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
def deploy_render(out_dir: Path) -> None:
    """Write gunicorn, supervisor and nginx files for this host's settings."""
    from flaskmodel.deploy.render import render_deploy  # noqa: PLC0415

    for path in render_deploy(load_settings(), out_dir):
        click.echo(str(path))
