"""Heartbeat snapshots (``ModelCatalog``): submits reuse a recent read of the live workers when it
has their model, and read afresh before refusing one (404/503) or missing a version."""

from __future__ import annotations

import uuid
from typing import cast

import pytest
import redis
from celery import Celery

from flaskmodel.errors import ModelNotFound, ServiceUnavailable
from flaskmodel.jobs.store import JobStore
from flaskmodel.jobs.submit import JobSubmitter
from flaskmodel.schemas import JobRequest, WorkerHeartbeat
from flaskmodel.storage.catalog import ModelCatalog
from flaskmodel.storage.workers import WorkerRegistry
from tests.worker.test_version_rollout import _advert


def _beat(registry: WorkerRegistry, worker: str, name: str, states: dict[int, str]) -> None:
    registry.beat(
        WorkerHeartbeat(
            worker_id=worker,
            hostname="test",
            pid=0,
            ready=True,
            models={name: _advert(name, states)},
        )
    )


def test_a_recent_snapshot_serves_until_a_fresh_read(redis_client: redis.Redis) -> None:
    registry = WorkerRegistry(redis_client, ttl=30)
    catalog = ModelCatalog(registry)
    name, a, b = (
        f"snap_{uuid.uuid4().hex[:8]}",
        f"test-{uuid.uuid4().hex}",
        f"test-{uuid.uuid4().hex}",
    )
    try:
        _beat(registry, a, name, {1: "AVAILABLE"})
        first = catalog.live()
        _beat(registry, b, name, {1: "AVAILABLE"})
        assert catalog.live(max_age=60) is first  # read under a minute ago: reused
        fresh = catalog.live()
        assert {w.worker_id for w in fresh} - {w.worker_id for w in first} == {b}
        assert catalog.live(max_age=60) is fresh  # every read refreshes the snapshot
    finally:
        registry.remove(a)
        registry.remove(b)


def test_lookups_read_afresh_before_refusing(redis_client: redis.Redis) -> None:
    registry = WorkerRegistry(redis_client, ttl=30)
    catalog = ModelCatalog(registry)
    old, new = f"snap_{uuid.uuid4().hex[:8]}", f"snap_{uuid.uuid4().hex[:8]}"
    a, b = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    try:
        _beat(registry, a, old, {1: "AVAILABLE"})
        assert catalog.model(old, max_age=60).latest == 1  # the snapshot now holds `old` only
        _beat(registry, b, new, {1: "AVAILABLE"})
        _beat(registry, a, old, {1: "AVAILABLE", 2: "AVAILABLE"})
        assert catalog.model(old, max_age=60).versions == [1]  # found in the snapshot: reused
        assert catalog.model(old, 2, max_age=60).versions == [1, 2]  # a version it lacks: afresh
        assert catalog.model(new, max_age=60).latest == 1  # a model it lacks: read afresh
        with pytest.raises(ModelNotFound):
            catalog.model(f"snap_missing_{uuid.uuid4().hex[:8]}", max_age=60)
    finally:
        registry.remove(a)
        registry.remove(b)


def test_a_merged_advert_is_reused_while_the_heartbeats_are_unchanged(
    redis_client: redis.Redis,
) -> None:
    registry = WorkerRegistry(redis_client, ttl=30)
    catalog = ModelCatalog(registry)
    name, a = f"snap_{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4().hex}"
    try:
        _beat(registry, a, name, {1: "AVAILABLE"})
        first = catalog.model(name, max_age=0)
        assert catalog.model(name, max_age=0) is first  # read again, same heartbeats: no merge
        _beat(registry, a, name, {1: "AVAILABLE", 2: "AVAILABLE"})
        assert catalog.model(name, max_age=0).versions == [1, 2]
    finally:
        registry.remove(a)


def test_the_submitter_asks_the_catalog(redis_client: redis.Redis) -> None:
    """A submit for a model no worker serves is refused by the catalog before any record is
    written (404, or 503 when no worker at all is up in this database)."""
    catalog = ModelCatalog(WorkerRegistry(redis_client, ttl=30))
    submitter = JobSubmitter(
        cast(JobStore, None), catalog, cast(Celery, None), queue="unused"
    )  # neither is reached: the refusal comes first
    missing = f"snap_missing_{uuid.uuid4().hex[:8]}"
    with pytest.raises((ModelNotFound, ServiceUnavailable)) as refused:
        submitter.submit(JobRequest(model=missing, inputs=[[1.0]]), idempotency_key=None)
    assert missing in str(refused.value)
