"""The ``flaskmodel`` command: up, serve, worker, dicom, demo, check, deploy, bench, and the job
API's client commands (submit, jobs, show, cancel; ``--json`` prints the API's answers)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from flaskmodel.client import Client, ClientError, jobs_table, load_inputs, result_table
from flaskmodel.logs import configure
from flaskmodel.settings import Settings, setting_origins, settings_table

API_KEY_OPTION = click.option(
    "--api-key",
    envvar="FLASKMODEL_API_KEY",
    default=None,
    help="API key to send (when the server requires one); env FLASKMODEL_API_KEY.",
)
URL_OPTION = click.option(
    "--url", default=None, help="Server URL (default: http://web.host:web.port)."
)
JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="Print the answer as JSON instead of a table."
)


def API_OPTIONS(command: Callable[..., None]) -> Callable[..., None]:  # noqa: N802 - a decorator
    """``--json``, ``--url`` and ``--api-key``: the options of every command of the job API."""
    return JSON_OPTION(URL_OPTION(API_KEY_OPTION(command)))


def _config_path() -> Path | None:
    config: Path | None = click.get_current_context().find_root().params.get("config")
    return config


def load_settings() -> Settings:
    """The settings of this command: environment, then the settings file, then defaults."""
    try:
        return Settings.load(_config_path())
    except ValueError as exc:  # pydantic's ValidationError is one too
        raise click.ClickException(f"invalid settings: {exc}") from exc


def _client(url: str | None, api_key: str | None) -> Client:
    if url is None:
        settings = load_settings()
        url = f"http://{settings.web.host}:{settings.web.port}"
    return Client(url, api_key=api_key)


@click.group()
@click.version_option(package_name="flaskmodel", message="flaskmodel %(version)s")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file (TOML; FLASKMODEL_* variables override it). Default: $FLASKMODEL_CONFIG, "
    "else ./flaskmodel.toml if present.",
)
def main(config: Path | None) -> None:
    """FlaskModel: serve TensorFlow models over HTTP with Celery workers and Redis."""


@main.command()
@click.option("--markdown", is_flag=True, help="Print docs/configuration.md's table instead.")
@JSON_OPTION
def check(markdown: bool, as_json: bool) -> None:
    """Print the settings and where each came from.

    A line per setting: its source (env, file or default), NAME=value, secrets masked."""
    if markdown:
        click.echo(settings_table(), nl=False)
        return
    settings = load_settings()
    path, origins = setting_origins(_config_path())
    rows = [(name, value, origins.get(name, "default")) for name, value in settings.masked()]
    if as_json:
        shown = {name: {"value": value, "source": source} for name, value, source in rows}
        click.echo(json.dumps({"file": None if path is None else str(path), "settings": shown}))
        return
    click.echo(f"# settings file: {path or 'none'}")
    for name, value, source in rows:
        click.echo(f"{source:<7}  {name}={value}")


@main.command()
@click.option(
    "--ct-size", default=256, show_default=True, help="Input height/width of ct_classifier."
)
@click.option("--force", is_flag=True, help="Rebuild even when the assets exist.")
def demo(ct_size: int, force: bool) -> None:
    """Build the demo models and CT series. Offline and deterministic."""
    settings = load_settings()
    from flaskmodel.demo.build import build_demo  # noqa: PLC0415 - imports TensorFlow

    for line in build_demo(settings.models_root, settings.data_root, ct_size=ct_size, force=force):
        click.echo(line)


@main.command()
@click.option("--models", default=None, help="Comma-separated models to serve (default: all).")
@click.option("--name", default=None, help="Celery node name (default: worker.node_name).")
def worker(models: str | None, name: str | None) -> None:
    """Run a Celery worker. The models load in each pool process after fork."""
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
    """Run the DICOM front door. Storage SCP and STOW-RS; complete series become jobs."""
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
    """Run the web tier. Gunicorn, gevent workers, the packaged gunicorn config."""
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
    """Run the whole stack in the foreground. Redis, worker, front door, gunicorn, nginx."""
    settings = load_settings()
    configure(settings)
    from flaskmodel.demo.samples import sample_requests  # noqa: PLC0415
    from flaskmodel.deploy.stack import run_stack  # noqa: PLC0415

    samples = sample_requests(settings)
    sys.exit(run_stack(settings, port=port, announce=click.echo, samples=samples))


@main.command()
@click.argument("series_uid", required=False)
@click.option(
    "--inputs",
    "inputs_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A tensor job instead: inputs from .npy, .npz or JSON (a list, "
    '{"instances": [...]} or {"inputs": ...}).',
)
@click.option(
    "--model", default=None, help="Model name (series jobs default: series.default_model)."
)
@click.option("--model-version", type=click.IntRange(min=1), default=None, help="Model version.")
@click.option(
    "--priority", type=click.IntRange(1, 10), default=None, help="1 (highest) … 10 (lowest)."
)
@click.option("--start", type=int, default=None, help="Series: first slice (sorted, inclusive).")
@click.option("--stop", type=int, default=None, help="Series: end slice (exclusive).")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job, then print its result.")
@API_OPTIONS
def submit(
    series_uid: str | None,
    inputs_file: Path | None,
    model: str | None,
    model_version: int | None,
    priority: int | None,
    start: int | None,
    stop: int | None,
    wait_: bool,
    as_json: bool,
    url: str | None,
    api_key: str | None,
) -> None:
    """Submit a series or tensor job; print its id.

    A series job names SERIES_UID; a tensor job reads --inputs FILE and needs --model. With
    --wait, a series job shows a progress bar, then the per-slice table; a tensor job its
    predictions. --json prints the API's answer instead: the submit's, or with --wait the
    finished job's.
    """
    if (series_uid is None) == (inputs_file is None):
        raise click.UsageError("give a SERIES_UID (series job) or --inputs FILE (tensor job)")
    if inputs_file is not None and (model is None or start is not None or stop is not None):
        raise click.UsageError("a tensor job needs --model and takes no --start or --stop")
    client = _client(url, api_key)
    try:
        if inputs_file is not None:
            try:
                inputs = load_inputs(inputs_file)
            except (OSError, ValueError) as exc:
                raise click.ClickException(str(exc)) from exc
            job = client.submit_tensor(
                inputs, model=str(model), version=model_version, priority=priority
            )
        else:
            job = client.submit_series(
                str(series_uid),
                model=model or load_settings().series.default_model,
                start=start,
                stop=stop,
                version=model_version,
                priority=priority,
            )
        if not wait_:
            click.echo(json.dumps(job) if as_json else job["job_id"])
            return
        if as_json or inputs_file is not None:
            view = client.wait(job["job_id"])
        else:
            click.echo(job["job_id"])
            view = _wait_with_bar(client, job["job_id"])
    except ClientError as exc:
        raise click.ClickException(exc.message) from exc
    if not as_json and inputs_file is not None:
        click.echo(job["job_id"])
    _show_finished(view, as_json)


@main.command()
@click.argument("job_id")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to finish first.")
@API_OPTIONS
def show(job_id: str, wait_: bool, as_json: bool, url: str | None, api_key: str | None) -> None:
    """Show a job: its state, or its result.

    A finished job prints its result table (per slice, or per example); one still queued or
    running prints its state and progress. --json prints the API's answer.
    """
    client = _client(url, api_key)
    try:
        view = client.wait(job_id) if wait_ else client.job(job_id)
    except ClientError as exc:
        raise click.ClickException(exc.message) from exc
    if view["state"] not in ("QUEUED", "RUNNING"):
        _show_finished(view, as_json)
    elif as_json:
        click.echo(json.dumps(view))
    else:
        done, total = view["progress"]["done"], view["progress"]["total"]
        click.echo(f"{job_id}  {view['state']}  {done}/{total}")


@main.command()
@click.argument("job_id")
@API_OPTIONS
def cancel(job_id: str, as_json: bool, url: str | None, api_key: str | None) -> None:
    """Cancel a queued or running job. Its queued work never runs."""
    try:
        view = _client(url, api_key).cancel(job_id)
    except ClientError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(json.dumps(view) if as_json else f"{view['job_id']}  {view['state']}")


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many of the newest jobs.")
@API_OPTIONS
def jobs(limit: int, as_json: bool, url: str | None, api_key: str | None) -> None:
    """List the newest jobs, state and progress."""
    client = _client(url, api_key)
    try:
        if as_json:
            click.echo(json.dumps(client.jobs_page(limit)))
            return
        views = client.jobs(limit)
    except ClientError as exc:
        raise click.ClickException(exc.message) from exc
    for line in jobs_table(views):
        click.echo(line)


def _wait_with_bar(client: Client, job_id: str) -> dict[str, Any]:
    with click.progressbar(length=1, label="slices", show_pos=True, file=sys.stderr) as bar:

        def show(view: dict[str, Any]) -> None:
            total = view["progress"]["total"]
            if total and bar.length != total:
                bar.length = total
            bar.update(view["progress"]["done"] - bar.pos)

        return client.wait(job_id, on_progress=show)


def _show_finished(view: dict[str, Any], as_json: bool) -> None:
    """A finished job: as JSON, or its result table; an error exit unless it SUCCEEDED."""
    if as_json:
        click.echo(json.dumps(view))
    if view["state"] != "SUCCEEDED":
        error = view.get("error") or {}
        raise click.ClickException(f"job {view['state']}: {error.get('message', '')}")
    if as_json:
        return
    for line in result_table(view):
        click.echo(line)


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
    """Benchmark the models and the stack. Writes a Markdown report."""
    from flaskmodel.bench.run import run_bench  # noqa: PLC0415 - imports TensorFlow

    path = run_bench(out_dir, quick=quick, say=click.echo)
    click.echo(f"report: {path}")


@main.group()
def deploy() -> None:
    """Production deployment files."""


@deploy.command("render")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
def deploy_render(out_dir: Path) -> None:
    """Write the supervisor and nginx files. For this host's settings."""
    from flaskmodel.deploy.supervisor_conf import render_deploy  # noqa: PLC0415

    for path in render_deploy(load_settings(), out_dir):
        click.echo(str(path))
