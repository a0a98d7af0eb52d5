"""The advert cache synchronous calls use (``ModelCatalog``, shared with job submits): one caller
refreshes an aged snapshot while the others keep using it; a refusal is read afresh."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import cast

import pytest
import redis

from flaskmodel.errors import ModelNotFound
from flaskmodel.schemas import ModelAdvert, WorkerHeartbeat
from flaskmodel.settings import BatchingSettings
from flaskmodel.storage.catalog import CALL_MAX_AGE, ModelCatalog
from flaskmodel.storage.workers import WorkerRegistry
from flaskmodel.sync.predictor import SyncPredictor
from tests.worker.test_version_rollout import _advert


class SlowRegistry(WorkerRegistry):
    """The real registry, each read taking 0.2 s longer and counted (as a Redis under load)."""

    reads = 0

    def live(self) -> list[WorkerHeartbeat]:
        self.reads += 1
        time.sleep(0.2)
        return super().live()


@pytest.fixture
def served(redis_client: redis.Redis) -> Iterator[tuple[SlowRegistry, str]]:
    registry = SlowRegistry(redis_client, ttl=30)
    name, worker = f"adv_{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4().hex}"
    registry.beat(
        WorkerHeartbeat(
            worker_id=worker,
            hostname="test",
            pid=0,
            ready=True,
            models={name: _advert(name, {1: "AVAILABLE", 2: "AVAILABLE"})},
        )
    )
    yield registry, name
    registry.remove(worker)


def test_an_aged_snapshot_is_refreshed_once_while_the_others_use_it(
    served: tuple[SlowRegistry, str],
) -> None:
    registry, name = served
    catalog = ModelCatalog(registry)
    predictor = SyncPredictor(cast(redis.Redis, None), catalog, BatchingSettings())
    first = predictor.advert(name)
    assert registry.reads == 1
    assert predictor.advert(name) is first and registry.reads == 1  # fresh enough: no read
    time.sleep(CALL_MAX_AGE + 0.05)  # the snapshot ages past what a call accepts
    got: list[ModelAdvert] = []
    threads = [
        threading.Thread(target=lambda: got.append(predictor.advert(name))) for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(got) == 20 and all(a.name == name for a in got)
    assert registry.reads == 2  # one refresh, not twenty


def test_a_missing_version_is_refused_on_a_fresh_read(served: tuple[SlowRegistry, str]) -> None:
    registry, name = served
    catalog = ModelCatalog(registry)
    predictor = SyncPredictor(cast(redis.Redis, None), catalog, BatchingSettings())
    assert predictor.model(name)[1].version == 2
    before = registry.reads
    assert predictor.model(name, 1)[1].version == 1 and registry.reads == before  # cached
    with pytest.raises(ModelNotFound, match="no version 7"):
        predictor.model(name, 7)
    assert registry.reads > before  # the refusal was not decided on the snapshot
