"""The ``flaskmodel`` command: up, serve, worker, demo, check, deploy, submit."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from flaskmodel.client import Client, ClientError
from flaskmodel.logs import configure
from flaskmodel.settings import Settings, settings_table

logger = logging.getLogger(__name__)


API_KEY_OPTION = click.option(
    "--api-key",
    envvar="FLASKMODEL_API_KEY",
    default=None,
    help="API key to send (when the server requires one); env FLASKMODEL_API_KEY.",
)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc


@click.group()
def main() -> None:
    """FlaskModel: serve TensorFlow models over HTTP with Celery workers and Redis."""


@main.command()
@click.option("--markdown", is_flag=True, help="Print docs/configuration.md's table instead.")
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
    from flaskmodel.demo.build import build_demo  # noqa: PLC0415 - imports TensorFlow

    for line in build_demo(settings.models_root, settings.data_root, ct_size=ct_size, force=force):
        click.echo(line)


@main.command()
@click.option("--models", default=None, help="Comma-separated models to serve (default: all).")
@click.option("--name", default=None, help="Celery node name (default: worker.node_name).")
def worker(models: str | None, name: str | None) -> None:
    """Run a Celery worker (models load in each pool process after fork)."""
    # Slices are decoded and resized by numpy in two threads beside TensorFlow's own pools; a
    # multi-threaded BLAS inside them oversubscribes the cores (series jobs ran 25 % slower).
    # Set before numpy is first imported, below.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    settings = load_settings()
    if models:
        names = [name.strip() for name in models.split(",") if name.strip()]
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"models": names})}
        )
    if name:
        settings = settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"node_name": name})}
        )
    configure(settings)
    from flaskmodel.worker.main import run_worker  # noqa: PLC0415

    try:
        run_worker(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="DICOM port (default: dicom.port)."
)
@click.option("--ae-title", default=None, help="AE title of the SCP (default: dicom.ae_title).")
@click.option(
    "--http-socket",
    type=click.Path(path_type=Path),
    default=None,
    help="Serve STOW-RS on this unix socket (default: dicom.http_host:dicom.http_port).",
)
def dicom(port: int | None, ae_title: str | None, http_socket: Path | None) -> None:
    """Run the DICOM front door: Storage SCP, STOW-RS, complete series routed to jobs."""
    settings = load_settings()
    chosen = {"port": port, "ae_title": ae_title}
    update = {k: v for k, v in chosen.items() if v is not None}
    if update:
        try:
            section = settings.dicom.model_validate({**settings.dicom.model_dump(), **update})
        except ValidationError as exc:
            raise click.ClickException(f"invalid option: {exc}") from exc
        settings = settings.model_copy(update={"dicom": section})
    try:
        settings.redis_url()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    configure(settings)
    from flaskmodel.gateway.main import run_gateway  # noqa: PLC0415 - pydicom, pynetdicom

    sys.exit(run_gateway(settings, http_socket=http_socket))


@main.command()
@click.option("--host", default=None, help="Address to bind (default: web.host).")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port to bind (default: web.port)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Gunicorn worker processes (default: web.workers).",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="A line per request on stdout; off behind an nginx that logs every request itself.",
)
def serve(host: str | None, port: int | None, workers: int | None, access_log: bool) -> None:
    """Run the web tier: gunicorn, gevent workers, the packaged gunicorn config."""
    settings = load_settings()
    try:
        settings.redis_url()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    chosen = {"host": host, "port": port, "workers": workers}
    web = settings.web.model_copy(update={k: v for k, v in chosen.items() if v is not None})
    from flaskmodel.deploy.gunicorn_launch import exec_gunicorn  # noqa: PLC0415

    exec_gunicorn(settings.model_copy(update={"web": web}), access_log=access_log)


@main.command()
@click.option("--port", type=int, default=None, help="Public port (default: web.port).")
def up(port: int | None) -> None:
    """Start the whole stack (redis, worker, gunicorn, nginx) in the foreground."""
    settings = load_settings()
    configure(settings)
    from flaskmodel.demo.samples import sample_requests  # noqa: PLC0415
    from flaskmodel.deploy.stack import run_stack  # noqa: PLC0415

    samples = sample_requests(settings)
    sys.exit(run_stack(settings, port=port, announce=click.echo, samples=samples))


@main.command()
@click.argument("series_uid")
@click.option("--model", default=None, help="Model name (default: series.default_model).")
@click.option("--start", type=int, default=None, help="First slice (sorted order, inclusive).")
@click.option("--stop", type=int, default=None, help="End slice (exclusive).")
@click.option("--wait", "wait_", is_flag=True, help="Show progress, then the per-slice table.")
@click.option("--url", default=None, help="Server URL (default: http://web.host:web.port).")
@API_KEY_OPTION
def submit(
    series_uid: str,
    model: str | None,
    start: int | None,
    stop: int | None,
    wait_: bool,
    url: str | None,
    api_key: str | None,
) -> None:
    """Submit a DICOM series job and print its id (and, with --wait, its result)."""
    settings = load_settings()
    client = Client(url or f"http://{settings.web.host}:{settings.web.port}", api_key=api_key)
    try:
        job = client.submit_series(
            series_uid, model=model or settings.series.default_model, start=start, stop=stop
        )
        click.echo(job["job_id"])
        if not wait_:
            return
        view = _wait_with_bar(client, job["job_id"])
    except ClientError as exc:
        raise click.ClickException(exc.message) from exc
    if view["state"] != "SUCCEEDED":
        error = view.get("error", {})
        raise click.ClickException(f"job {view['state']}: {error.get('message', '')}")
    result = view["result"]
    click.echo(
        f"series {result['series_uid']}  model {result['model_name']} v{result['model_version']}"
        f"  direction {result['direction']}"
    )
    click.echo(f"{'index':>5}  {'instance':>8}  {'z (mm)':>9}  {'label':<16} {'raw':<16} score")
    for row in result["slices"]:
        top = max(row["scores"])
        number = "" if row["instance_number"] is None else row["instance_number"]
        click.echo(
            f"{row['index']:>5}  {number:>8}  {row['z']:>9.2f}  {row['label']:<16} "
            f"{row['label_raw']:<16} {top:.3f}"
        )


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many of the newest jobs.")
@click.option("--url", default=None, help="Server URL (default: http://web.host:web.port).")
@API_KEY_OPTION
def jobs(limit: int, url: str | None, api_key: str | None) -> None:
    """List recent jobs with their state and progress."""
    settings = load_settings()
    client = Client(url or f"http://{settings.web.host}:{settings.web.port}", api_key=api_key)
    try:
        views = client.jobs(limit)
    except ClientError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"{'job':<32}  {'kind':<6}  {'model':<16} {'state':<10} {'progress':>9}  created")
    for view in views:
        progress = f"{view['progress']['done']}/{view['progress']['total']}"
        click.echo(
            f"{view['job_id']:<32}  {view['kind']:<6}  {view['model']:<16} {view['state']:<10} "
            f"{progress:>9}  {view['created_at']}"
        )


def _wait_with_bar(client: Client, job_id: str) -> dict[str, Any]:
    with click.progressbar(length=1, label="slices", show_pos=True, file=sys.stderr) as bar:

        def show(view: dict[str, Any]) -> None:
            total = view["progress"]["total"]
            if total and bar.length != total:
                bar.length = total
            bar.update(view["progress"]["done"] - bar.pos)

        return client.wait(job_id, on_progress=show)


@main.command()
@click.option("--quick", is_flag=True, help="Fewer cells, shorter runs (under 3 minutes).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("var/bench"),
    show_default=True,
    help="Where the benchmark models, stack and report go.",
)
def bench(quick: bool, out_dir: Path) -> None:
    """Benchmark: in-process limits, then the real stack under wrk; writes a Markdown report."""
    from flaskmodel.bench.run import run_bench  # noqa: PLC0415 - imports TensorFlow

    path = run_bench(out_dir, quick=quick, say=click.echo)
    click.echo(f"report: {path}")


@main.group()
def deploy() -> None:
    """Production deployment files."""


@deploy.command("render")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
def deploy_render(out_dir: Path) -> None:
    """Write the supervisor program file and nginx site for this host's settings."""
    from flaskmodel.deploy.supervisor_conf import render_deploy  # noqa: PLC0415

    for path in render_deploy(load_settings(), out_dir):
        click.echo(str(path))
