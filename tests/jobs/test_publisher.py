"""``JobPublisher`` with real Celery publishes to a real Redis (no worker): concurrent submits of
one model share messages, every job is in exactly one, and a failed publish reaches every submit
whose job it carried."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from flaskmodel.jobs.broker import (
    make_celery,
    model_queue,
    publish_job,
    publish_jobs,
    redis_queue_keys,
)
from flaskmodel.jobs.publisher import JobPublisher
from flaskmodel.settings import Settings
from flaskmodel.worker.sweeper import message_ids
from tests import databases, procs
from tests.conftest import redis_db

QUEUE = "flaskmodel"


@pytest.fixture
def celery(redis_url: str) -> Iterator[tuple[Celery, redis.Redis]]:
    settings = Settings(redis={"url": redis_db(redis_url, databases.PUBLISHER)})
    client = redis.Redis.from_url(settings.redis_url(), decode_responses=True)
    client.flushdb()
    yield make_celery(settings), client
    client.flushdb()
    client.close()


def publisher(app: Celery, *, max_jobs: int, window: float = 0.0) -> JobPublisher:
    def publish(ids: list[str], model: str, priority: int) -> None:
        if len(ids) == 1:
            publish_job(app, ids[0], model, queue=QUEUE, priority=priority)
        else:
            publish_jobs(app, ids, model, queue=QUEUE, priority=priority)

    return JobPublisher(publish, max_jobs=max_jobs, window=window)


def queued(client: redis.Redis, model: str) -> list[list[str]]:
    """The job ids of each message waiting in ``model``'s queue."""
    return [
        message_ids(raw)
        for name in redis_queue_keys(model_queue(QUEUE, model))
        for raw in client.lrange(name, 0, -1)
    ]


def publish_at_once(jobs: JobPublisher, ids: list[str], model: str) -> dict[str, BaseException]:
    errors: dict[str, BaseException] = {}
    start = threading.Barrier(len(ids))

    def submit(job_id: str) -> None:
        start.wait()
        try:
            jobs.publish(job_id, model, 5, crowded=True)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            errors[job_id] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def test_concurrent_submits_share_messages_and_each_job_is_in_exactly_one(
    celery: tuple[Celery, redis.Redis],
) -> None:
    app, client = celery
    jobs = publisher(app, max_jobs=8, window=0.05)
    ids = [f"job{i:02d}" for i in range(40)]
    assert publish_at_once(jobs, ids, "m") == {}
    later = [f"later{i:02d}" for i in range(40)]
    assert publish_at_once(jobs, later, "m") == {}
    messages = queued(client, "m")
    carried = Counter(i for message in messages for i in message)
    assert carried == Counter([*ids, *later])  # every job once, in one message
    assert len(messages) < 20, messages
    assert max(len(m) for m in messages) <= 8
    # The second crowd fills whole messages, each sent as soon as it is full.
    assert sorted(len(m) for m in messages if m[0].startswith("later")) == [8] * 5, messages


def test_a_crowded_submit_waits_for_company_at_most_the_window(
    celery: tuple[Celery, redis.Redis],
) -> None:
    app, client = celery
    jobs = publisher(app, max_jobs=8, window=0.3)
    started = time.monotonic()
    jobs.publish("alone", "w", 5, crowded=True)  # other jobs of its model are unfinished
    waited = time.monotonic() - started
    assert 0.25 < waited < 2.0, waited
    assert queued(client, "w") == [["alone"]]


def test_an_isolated_submit_is_published_at_once_alone(
    celery: tuple[Celery, redis.Redis],
) -> None:
    app, client = celery
    jobs = publisher(app, max_jobs=8, window=5.0)  # a window that would show
    started = time.monotonic()
    jobs.publish("only", "quiet", 5)
    assert time.monotonic() - started < 2.0
    assert queued(client, "quiet") == [["only"]]


def test_a_failed_publish_reaches_every_submit_it_carried(redis_url: str) -> None:
    port = procs.free_port()  # nothing listens there
    settings = Settings(redis={"url": f"redis://127.0.0.1:{port}/0"})
    jobs = publisher(make_celery(settings), max_jobs=8, window=0.01)
    ids = [f"lost{i}" for i in range(6)]
    errors = publish_at_once(jobs, ids, "m")
    assert sorted(errors) == ids
    assert all(isinstance(e, OperationalError) for e in errors.values())
