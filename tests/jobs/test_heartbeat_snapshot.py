"""Heartbeat snapshots: submits reuse a recent read of the live workers when it has their model,
and read afresh before refusing one (404/503) or missing a version."""

from __future__ import annotations

import uuid
from typing import cast

import pytest
import redis
from celery import Celery

from flaskmodel.errors import ModelNotFound
from flaskmodel.jobs.store import JobStore
from flaskmodel.jobs.submit import JobSubmitter
from flaskmodel.schemas import WorkerHeartbeat
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
    name, a, b = (
        f"snap_{uuid.uuid4().hex[:8]}",
        f"test-{uuid.uuid4().hex}",
        f"test-{uuid.uuid4().hex}",
    )
    try:
        _beat(registry, a, name, {1: "AVAILABLE"})
        first = registry.live()
        _beat(registry, b, name, {1: "AVAILABLE"})
        assert registry.live(max_age=60) is first  # read under a minute ago: reused
        fresh = registry.live()
        assert {w.worker_id for w in fresh} - {w.worker_id for w in first} == {b}
        assert registry.live(max_age=60) is fresh  # every read refreshes the snapshot
    finally:
        registry.remove(a)
        registry.remove(b)


def test_submits_read_afresh_before_refusing(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flaskmodel.jobs.submit.SNAPSHOT_MAX_AGE", 60.0)
    registry = WorkerRegistry(redis_client, ttl=30)
    submitter = JobSubmitter(cast(JobStore, None), registry, cast(Celery, None), queue="unused")
    old, new = f"snap_{uuid.uuid4().hex[:8]}", f"snap_{uuid.uuid4().hex[:8]}"
    a, b = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    try:
        _beat(registry, a, old, {1: "AVAILABLE"})
        assert submitter.model(old).latest == 1  # the snapshot now holds `old` only
        _beat(registry, b, new, {1: "AVAILABLE"})
        _beat(registry, a, old, {1: "AVAILABLE", 2: "AVAILABLE"})
        assert submitter.model(old).versions == [1]  # found in the snapshot: reused
        assert submitter.model(old, 2).versions == [1, 2]  # a version it lacks: read afresh
        assert submitter.model(new).latest == 1  # a model it lacks: read afresh
        with pytest.raises(ModelNotFound):
            submitter.model(f"snap_missing_{uuid.uuid4().hex[:8]}")
    finally:
        registry.remove(a)
        registry.remove(b)
