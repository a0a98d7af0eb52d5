"""The module-level Celery app of Celery's own command line (``celery -A flaskmodel.worker.app``):
configured from the settings (environment, settings file) by the same function as the worker's
app, inert on import, and answered by real workers."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flaskmodel.jobs.broker import celery_config
from flaskmodel.settings import Settings
from tests import procs
from tests.conftest import FAKE_SPEC, Stack, write_fake_model

APP = "flaskmodel.worker.app"


def _env(settings: Settings | None = None) -> dict[str, str]:
    """This environment without FLASKMODEL_* variables, plus ``settings``' own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASKMODEL_")}
    return {**env, **(settings.env() if settings else {})}


def _celery(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(procs.VENV_BIN / "celery"), "-A", APP, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _only(node: str) -> list[str]:
    """Ask one node: the command returns with its answer instead of waiting out the timeout."""
    return [f"--destination={node}", "--timeout=10"]


def test_inspect_ping_answers_from_the_stack_worker(stack: Stack, tmp_path: Path) -> None:
    node = stack.settings.worker.node_name.replace("%h", socket.gethostname())
    done = _celery(["inspect", "ping", *_only(node)], _env(stack.settings), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"->\s+{re.escape(node)}: OK", done.stdout), done.stdout
    assert "pong" in done.stdout


def test_a_file_only_value_reaches_the_worker_and_the_celery_command(tmp_path: Path) -> None:
    """As ``flaskmodel up`` does: the settings read from ./flaskmodel.toml reach the worker
    through ``Settings.env()``; ``celery -A`` run in that directory reads the same file."""
    redis_proc, redis_url = procs.start_redis(tmp_path / "redis")
    models = tmp_path / "models"
    write_fake_model(models, "fake", 1, FAKE_SPEC)
    (tmp_path / "flaskmodel.toml").write_text(
        f'models_root = "{models}"\n'
        f'data_root = "{tmp_path}"\n'
        f'run_dir = "{tmp_path}"\n'
        f'[redis]\nurl = "{redis_url}"\n'
        '[runtime]\nbackend = "fake"\n'
        '[worker]\nnode_name = "fromfile@celery-app-test"\nheartbeat_seconds = 1.0\n'
    )
    settings = Settings.load(tmp_path / "flaskmodel.toml")
    worker = procs.start_worker(settings, tmp_path / "worker.log")
    try:
        done = _celery(["inspect", "ping", *_only("fromfile@celery-app-test")], _env(), tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"->\s+fromfile@celery-app-test: OK", done.stdout), done.stdout
    finally:
        procs.stop(worker)
        procs.stop(redis_proc)


def test_importing_and_configuring_connects_to_nothing(tmp_path: Path) -> None:
    """The configuration is the worker's (``celery_config``) and reading it opens no
    connection: the broker below listens, and nobody knocks."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/3"
        settings = Settings(redis={"url": url}, jobs={"ttl_seconds": 123})
        code = (
            "import json\n"
            "from flaskmodel.worker.app import app\n"
            "keys = ['broker_url', 'result_expires', 'task_acks_late', 'accept_content',\n"
            "        'broker_transport_options', 'task_default_queue']\n"
            "print(json.dumps({k: app.conf[k] for k in keys}))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=_env(settings),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with pytest.raises(TimeoutError):
            listener.accept()
    shown = json.loads(done.stdout)
    expected = celery_config(settings)
    for key, value in shown.items():
        assert value == json.loads(json.dumps(expected[key])), key
    assert shown["broker_url"] == url and shown["result_expires"] == 123


def test_without_a_redis_the_command_says_what_to_set(tmp_path: Path) -> None:
    done = _celery(["inspect", "ping", "--timeout=1"], _env(), tmp_path)
    assert done.returncode != 0
    assert "no Redis configured: set FLASKMODEL_REDIS__URL" in done.stderr
