"""Version rollout: states in the status APIs, the default only once every worker has it warm,
and a hot swap under load with no failed request."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import redis
import requests

from flaskmodel.schemas import ModelAdvert, ModelSpec, TensorSpec, WorkerHeartbeat
from flaskmodel.settings import Settings
from flaskmodel.storage.catalog import ModelCatalog
from flaskmodel.storage.workers import WorkerRegistry
from tests import databases
from tests.conftest import FAKE_SPEC, redis_db, running_stack, write_fake_model
from tests.runtime.test_repository import drop_version


def _advert(name: str, states: dict[int, str]) -> ModelAdvert:
    available = [v for v, s in states.items() if s == "AVAILABLE"]
    spec = ModelSpec(
        name=name,
        version=1,
        inputs=[TensorSpec(name="x", dtype="float32", shape=[None])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=[None])],
    )
    return ModelAdvert(
        name=name,
        versions=available,
        latest=max(available),
        specs={v: spec.model_copy(update={"version": v}) for v in available},
        states=states,
    )


def test_default_version_waits_for_every_worker(redis_client: redis.Redis) -> None:
    registry = WorkerRegistry(redis_client, ttl=30)
    catalog = ModelCatalog(registry)
    name = "rollout_unit"

    def beat(worker: str, states: dict[int, str]) -> None:
        registry.beat(
            WorkerHeartbeat(
                worker_id=f"test-{worker}",
                hostname="test",
                pid=0,
                ready=True,
                models={name: _advert(name, states)},
            )
        )

    try:
        beat("a", {1: "AVAILABLE", 2: "AVAILABLE"})
        beat("b", {1: "AVAILABLE", 2: "LOADING"})
        merged = catalog.model(name, max_age=0)
        assert merged.latest == 1  # b has not warmed version 2 yet
        assert merged.versions == [1, 2] and merged.states[2] == "AVAILABLE"
        beat("b", {1: "END", 2: "AVAILABLE"})
        merged = catalog.model(name, max_age=0)
        assert merged.latest == 2
        assert merged.states == {1: "AVAILABLE", 2: "AVAILABLE"}  # a still serves 1
    finally:
        registry.remove("test-a")
        registry.remove("test-b")


BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def test_hot_swap_under_load(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("swap-models")
    write_fake_model(root, "swap", 1, FAKE_SPEC)
    logs = tmp_path_factory.mktemp("swap-logs")
    settings = Settings(
        models_root=root,
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.VERSION_ROLLOUT)},
        worker={"heartbeat_seconds": 0.5},
        runtime={"backend": "fake"},
    )
    with running_stack(settings, logs) as stack:
        answers: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def load() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    reply = session.post(stack.url("/v2/models/swap/infer"), json=BODY, timeout=30)
                    version = reply.json().get("model_version", "") if reply.ok else reply.text
                    answers.append((time.monotonic(), reply.status_code, version))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            drop_version(root, "swap", 2, {**FAKE_SPEC, "load_delay_ms": 2000})
            seen: set[str] = set()
            deadline = time.monotonic() + 20
            while "AVAILABLE" not in seen and time.monotonic() < deadline:
                status = requests.get(stack.url("/v1/models/swap/versions/2"), timeout=10)
                if status.ok:
                    seen.add(status.json()["model_version_status"][0]["state"])
                    if "LOADING" in seen:
                        ready = requests.get(stack.url("/v2/models/swap/versions/2/ready"))
                        assert ready.status_code in (200, 503)
                time.sleep(0.1)
            assert seen >= {"LOADING", "AVAILABLE"}, seen
            while not any(v == "2" for _, _, v in answers) and time.monotonic() < deadline:
                time.sleep(0.1)
            swapped = min(t for t, _, v in answers if v == "2")
            time.sleep(2.0)  # past the web tier's advert cache
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        failures = [a for a in answers if a[1] != 200]
        assert not failures, failures[:5]
        assert any(v == "1" for _, _, v in answers)
        late = [v for t, _, v in answers if t > swapped + 1.5]
        assert late and set(late) == {"2"}, set(late)
        # Version 1's folder goes: it is unloaded and reported END.
        shutil.rmtree(root / "swap" / "1")
        deadline = time.monotonic() + 10
        states: dict[str, str] = {}
        while states.get("1") != "END" and time.monotonic() < deadline:
            body = requests.get(stack.url("/v1/models/swap"), timeout=10).json()
            states = {s["version"]: s["state"] for s in body["model_version_status"]}
            time.sleep(0.2)
        assert states == {"1": "END", "2": "AVAILABLE"}
        gone = requests.get(stack.url("/v2/models/swap/versions/1/ready"), timeout=10)
        assert gone.status_code == 404
