"""Session fixtures: a real redis-server on a free port, real models, real worker and gunicorn."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from flaskmodel.schemas import BatchStatsView
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import connect
from flaskmodel.storage.workers import WorkerRegistry
from tests import databases, procs
from tests.orthanc import Orthanc, start_orthanc, stop_orthanc

# The tests read no settings file: a developer's ./flaskmodel.toml must not change what they test.
os.environ["FLASKMODEL_CONFIG"] = ""

SAMPLES = Path(__file__).parent / "data" / "dicom"
CHEST = "tcia-lung-pet-ct-dx-A0002-chest-B40f-j2k"


def populate_data_root(data_root: Path) -> None:
    """The real chest sample under the name ``chest`` and the demo phantom series."""
    from flaskmodel.demo.build import write_demo_series  # noqa: PLC0415

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


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A real Orthanc (AE ``PACS``, basic auth, DICOMweb) on free ports for the session: the
    hospital's PACS of the DICOM tests."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    stop_orthanc(server)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    # No flush: session-wide workers keep heartbeats here; tests use unique keys instead.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real SavedModels: ``tiny``, a small ``ct_classifier`` and the string model ``echo``."""
    from flaskmodel.demo.build import build_ct_classifier, build_tiny  # noqa: PLC0415

    root = tmp_path_factory.mktemp("models")
    build_tiny(root)
    build_ct_classifier(root, size=64)
    build_echo(root)
    return root


def build_echo(root: Path) -> Path:
    """``echo``: ``text`` string [None] and ``scale`` float32 [None, 2] in; ``doubled`` (scale
    × 2), ``length`` (int32 byte length of text) and ``text_bytes`` (text itself) out.
    Its ``flaskmodel.json`` labels version 1 ``stable``."""
    import tensorflow as tf  # noqa: PLC0415

    signature = [
        tf.TensorSpec([None], tf.string, name="text"),
        tf.TensorSpec([None, 2], tf.float32, name="scale"),
    ]

    @tf.function(input_signature=signature)
    def serve(text: Any, scale: Any) -> dict[str, Any]:
        return {"doubled": scale * 2.0, "length": tf.strings.length(text), "text_bytes": text}

    target = root / "echo" / "1"
    tf.saved_model.save(tf.Module(), str(target), signatures={"serving_default": serve})
    (root / "echo" / "flaskmodel.json").write_text(json.dumps({"version_labels": {"stable": 1}}))
    return target


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

    def __init__(
        self, settings: Settings, base_url: str, logs: Path, pids: tuple[int, ...] = ()
    ) -> None:
        self.settings = settings
        self.base_url = base_url
        self.logs = logs
        self.pids = pids  # the worker's and gunicorn's main processes

    def url(self, path: str) -> str:
        return self.base_url + path

    def stats(self, model: str, version: int = 1) -> BatchStatsView:
        """The batch stats of ``model`` as of now: from the first heartbeat sent after this call
        (one worker per stack; heartbeats go every second)."""
        return self.stats_after(model, lambda _: True, version)

    def stats_after(
        self, model: str, check: Callable[[BatchStatsView], bool], version: int = 1
    ) -> BatchStatsView:
        """Fresh stats once ``check`` holds for them (or the last seen after 10 s)."""
        since = time.time()
        deadline = time.monotonic() + 10
        client = connect(self.settings)
        registry = WorkerRegistry(client, ttl=self.settings.worker.heartbeat_seconds * 3)
        try:
            while True:
                beats = [b for b in registry.live() if model in b.models and b.sent_at > since]
                if beats:
                    stats = beats[0].models[model].stats[version]
                    if check(stats) or time.monotonic() > deadline:
                        return stats
                elif time.monotonic() > deadline:
                    raise LookupError(f"no worker publishes model {model!r}")
                time.sleep(0.1)
        finally:
            client.close()


@contextmanager
def running_stack(settings: Settings, logs: Path, *, web_workers: int = 1) -> Iterator[Stack]:
    """A real worker and gunicorn (``web_workers`` processes) with ``settings`` until the block
    ends."""
    worker = procs.start_worker(settings, logs / "worker.log")
    try:
        port = procs.free_port()
        web = procs.start_gunicorn(settings, logs / "gunicorn.log", port, workers=web_workers)
        try:
            yield Stack(settings, f"http://127.0.0.1:{port}", logs, (worker.pid, web.pid))
        finally:
            procs.stop(web)
    finally:
        procs.stop(worker)


def redis_db(redis_url: str, db: int) -> str:
    """The session Redis URL on another database (a separate stack shares nothing with it)."""
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


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
        # Long enough that concurrent test threads reliably meet in one batch.
        batching={"max_batch_delay_ms": 10},
    )
    with running_stack(settings, logs) as stack:
        yield stack


SLOW_MS = 400
TYPED_SPEC = {
    "inputs": [
        {"name": "flags", "dtype": "bool", "shape": [None, 2]},
        {"name": "counts", "dtype": "int32", "shape": [None, 3]},
        {"name": "half", "dtype": "float16", "shape": [None, 1]},
        {"name": "pixels", "dtype": "uint8", "shape": [None, 2]},
    ],
    "outputs": [
        {"name": "y", "dtype": "float32", "shape": [None, 3]},
        {"name": "z", "dtype": "float64", "shape": [None, 2]},
    ],
}


@pytest.fixture(scope="session")
def fake_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    """A stack of fake models on Redis database 1: ``slow`` (400 ms a call, batching off),
    ``fake`` (batching 50 ms), ``flaky`` (fails on 7.0, batching 300 ms, batch size not tuned:
    its tests need calls made at once in one batch, which a probe of the tuner may cut) and
    ``typed`` (every numeric dtype family)."""
    root = tmp_path_factory.mktemp("fake-stack-models")
    write_fake_model(root, "slow", 1, {**FAKE_SPEC, "delay_ms": SLOW_MS})
    (root / "slow" / "flaskmodel.json").write_text(json.dumps({"max_batch_delay_ms": 0}))
    write_fake_model(root, "fake", 1, FAKE_SPEC)
    (root / "fake" / "flaskmodel.json").write_text(json.dumps({"max_batch_delay_ms": 50}))
    write_fake_model(root, "flaky", 1, {**FAKE_SPEC, "fail_on": 7.0})
    flaky = {"max_batch_delay_ms": 300, "tune_batch_size": False}
    (root / "flaky" / "flaskmodel.json").write_text(json.dumps(flaky))
    write_fake_model(root, "typed", 1, TYPED_SPEC)
    logs = tmp_path_factory.mktemp("fake-stack-logs")
    settings = Settings(
        models_root=root,
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.FAKE_STACK)},
        worker={"heartbeat_seconds": 1.0, "concurrency": 1},
        runtime={"backend": "fake"},
    )
    with running_stack(settings, logs) as stack:
        yield stack
