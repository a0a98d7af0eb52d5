"""Session fixtures: a real redis-server on a free port, real models, real worker and gunicorn."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from flaskmodel.settings import Settings
from tests import procs

SAMPLES = Path(__file__).parent / "data" / "dicom"
CHEST = "tcia-lung-pet-ct-dx-A0002-chest-B40f-j2k"


def populate_data_root(data_root: Path) -> None:
    """The real chest sample under the name ``chest`` and the demo phantom series."""
    from flaskmodel.demo import write_demo_series  # noqa: PLC0415

    shutil.copytree(SAMPLES / CHEST, data_root / "chest")
    write_demo_series(data_root, n_slices=24, size=64)


FAKE_SPEC = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 3]}],
}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = procs.start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    procs.stop(proc)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    # No flush: session-wide workers keep heartbeats here; tests use unique keys instead.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with the real ``tiny`` SavedModel and a small real ``ct_classifier``."""
    from flaskmodel.demo import build_ct_classifier, build_tiny  # noqa: PLC0415

    root = tmp_path_factory.mktemp("models")
    build_tiny(root)
    build_ct_classifier(root, size=64)
    return root


@pytest.fixture
def fake_models_root(tmp_path: Path) -> Path:
    root = tmp_path / "fake-models"
    write_fake_model(root, "fake", 1, FAKE_SPEC)
    return root


def write_fake_model(root: Path, name: str, version: int, spec: dict[str, Any]) -> Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fake.json").write_text(json.dumps(spec))
    return folder


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "models_root": tmp_path / "models",
            "data_root": tmp_path / "data",
            "run_dir": tmp_path / "run",
            "redis": {"url": redis_url},
            "worker": {"heartbeat_seconds": 1.0},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return Settings(**values)

    return make


class Stack:
    """A real worker and gunicorn over the session's Redis and models."""

    def __init__(self, settings: Settings, base_url: str, logs: Path) -> None:
        self.settings = settings
        self.base_url = base_url
        self.logs = logs

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, models_root: Path
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    data_root = tmp_path_factory.mktemp("data")
    populate_data_root(data_root)
    settings = Settings(
        models_root=models_root,
        data_root=data_root,
        run_dir=logs,
        redis={"url": redis_url},
        worker={"heartbeat_seconds": 1.0, "concurrency": 1},
        web={"max_request_bytes": 1_000_000},
    )
    worker = procs.start_worker(settings, logs / "worker.log")
    port = procs.free_port()
    web = procs.start_gunicorn(settings, logs / "gunicorn.log", port)
    yield Stack(settings, f"http://127.0.0.1:{port}", logs)
    procs.stop(web)
    procs.stop(worker)
