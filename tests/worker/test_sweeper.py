"""The orphan sweeper against a real Redis and real kombu messages (no worker runs them here).

Jobs whose message waits in the queue or sits taken-but-unacknowledged are left alone; a job with
no message anywhere is published again on the second sweep that finds it so, once; finished jobs
and jobs whose record changed between sweeps are left alone; one sweeper leads at a time, and
takes over at once from a leader whose process's claims expired. Messages taken and never
acknowledged go back to the front of their queue at their priority when no live worker claims
them, and only then: not while claimed, taken since a holder's last list, younger than the grace,
of another queue, nor while the sweeper's own claims say Redis was just out of reach.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection

from flaskmodel.jobs.admission import Admission
from flaskmodel.jobs.broker import TASK_RUN_JOB, make_celery, model_queue, redis_queue_keys
from flaskmodel.jobs.store import JobStore
from flaskmodel.schemas import JobRequest
from flaskmodel.settings import Settings
from flaskmodel.storage.workers import DeliveryClaims
from flaskmodel.worker.sweeper import LOCK, UNACKED, UNACKED_INDEX, OrphanSweeper, message_ids
from tests import databases
from tests.conftest import redis_db

MODEL = "swept"


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(
        redis={"url": redis_db(redis_url, databases.SWEEPER)}, runtime={"backend": "fake"}
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(settings.redis_url(), decode_responses=True)
    found.flushdb()
    yield found
    found.flushdb()
    found.close()


def accept(client: redis.Redis, jobs: JobStore) -> str:
    """A job recorded and admitted as the web tier does it, not yet published."""
    job_id, *_ = jobs.create(JobRequest(model=MODEL, inputs=[[1.0, 2.0, 3.0, 4.0]]))
    Admission(client, max_pending=100, ttl=3600).admit(MODEL, job_id)
    return job_id


def queued_ids(client: redis.Redis, settings: Settings) -> list[str]:
    raws = [
        raw
        for name in redis_queue_keys(model_queue(settings.worker.queue, MODEL))
        for raw in client.lrange(name, 0, -1)
    ]
    return [i for r in raws for i in message_ids(r)]


def test_sweeper_republishes_only_jobs_without_a_message(
    client: redis.Redis, settings: Settings
) -> None:
    celery = make_celery(settings)
    queue = model_queue(settings.worker.queue, MODEL)
    jobs = JobStore(client, ttl=3600)
    waiting, taken, lost, running_lost, finished, changing = (
        accept(client, jobs) for _ in range(6)
    )
    # ``taken``: a consumer takes its message without acknowledging it (kombu keeps it in
    # ``unacked``); ``waiting``'s message waits in the queue.
    celery.send_task(TASK_RUN_JOB, args=[taken], task_id=taken, queue=queue)
    with celery.connection_for_read() as conn:
        held = conn.SimpleQueue(queue, no_ack=False).get(timeout=5)
        assert held.headers["id"] == taken and client.hlen("unacked") == 1
        celery.send_task(TASK_RUN_JOB, args=[waiting], task_id=waiting, queue=queue)
        jobs.start(running_lost)  # RUNNING, its message acknowledged long ago
        jobs.succeed(finished, {"ok": True})
        sweeper = OrphanSweeper(
            client, celery, queue=settings.worker.queue, interval=1, lease=60, owner="test:1"
        )
        assert sweeper.lead()
        assert sweeper.sweep() == []  # first sighting: suspects only
        jobs.start(changing)  # its record moved meanwhile: not an orphan yet
        again = sweeper.sweep()
        assert sorted(again) == sorted([lost, running_lost])
        assert sorted(queued_ids(client, settings)) == sorted([waiting, lost, running_lost])
        assert sweeper.sweep() == [changing]  # unchanged since the last sweep now
        assert sweeper.sweep() == []  # every unfinished job has a message again
        held.ack()
    print(f"\nsweeper: republished {again} then [{changing}]; left the queued and taken jobs")


def test_one_sweeper_leads_and_another_takes_over_when_it_stops(
    client: redis.Redis, settings: Settings
) -> None:
    celery = make_celery(settings)
    claims = DeliveryClaims(client)
    for owner in ("a:1", "b:2"):  # both main processes alive
        claims.publish(owner, [], sent_at=time.time(), since=time.time(), ttl=60)
    first = OrphanSweeper(client, celery, queue="q", interval=0.2, lease=60, owner="a:1")
    second = OrphanSweeper(client, celery, queue="q", interval=0.2, lease=60, owner="b:2")
    assert first.lead()
    assert not second.lead()
    assert first.lead()  # keeps it
    client.delete(LOCK)  # the leader stalled and its lock ran out
    assert second.lead()
    assert not first.lead()
    client.delete("flaskmodel:held:b:2")  # the leader's process died: its claims expired
    assert first.lead()  # taken over before the lock's own TTL


def test_a_message_unacknowledged_past_the_lease_counts_as_lost(
    client: redis.Redis, settings: Settings
) -> None:
    """kombu puts a message unacknowledged past the lease back; when that restore stalls (its
    lock left behind by an outage) the sweeper publishes the job again."""
    celery = make_celery(settings)
    queue = model_queue(settings.worker.queue, MODEL)
    jobs = JobStore(client, ttl=3600)
    stuck = accept(client, jobs)
    celery.send_task(TASK_RUN_JOB, args=[stuck], task_id=stuck, queue=queue)
    with celery.connection_for_read() as conn:
        held = conn.SimpleQueue(queue, no_ack=False).get(timeout=5)
        jobs.start(stuck)
        fresh = OrphanSweeper(
            client, celery, queue=settings.worker.queue, interval=0.1, lease=60, owner="t:1"
        )
        expired = OrphanSweeper(
            client, celery, queue=settings.worker.queue, interval=0.1, lease=0, owner="t:1"
        )
        time.sleep(0.3)  # taken longer ago than a lease of 0 plus two sweep intervals
        assert fresh.sweep() == [] and fresh.sweep() == []
        assert expired.sweep() == [] and expired.sweep() == [stuck]
        assert queued_ids(client, settings) == [stuck]
        held.ack()


def take(celery: Celery, conn: Connection, queue: str, job_id: str, priority: int) -> str:
    """Publish a job's message and take it without acknowledging it; its delivery tag."""
    celery.send_task(TASK_RUN_JOB, args=[job_id, 0], task_id=job_id, queue=queue, priority=priority)
    held = conn.SimpleQueue(queue, no_ack=False).get(timeout=5)
    assert held.headers["id"] == job_id
    return str(held.delivery_tag)


def test_restore_puts_back_only_messages_no_live_worker_claims(
    client: redis.Redis, settings: Settings
) -> None:
    celery = make_celery(settings)
    queue = model_queue(settings.worker.queue, MODEL)
    claims = DeliveryClaims(client)
    now = time.time()
    with celery.connection_for_read() as conn:
        tags = {
            name: take(celery, conn, queue, name, priority)
            for name, priority in [("claimed", 4), ("dead", 4), ("young", 4), ("late", 4)]
        }
        other = take(celery, conn, "someone-else", "foreign", 0)
        # Taken 30 s ago (kombu's index says when), "young" 1 s ago, "late" 3 s ago.
        client.zadd(UNACKED_INDEX, {t: now - 30 for t in [*tags.values(), other]})
        client.zadd(UNACKED_INDEX, {tags["young"]: now - 1, tags["late"]: now - 3})
        # A live worker holds "claimed" and listed its deliveries 4 s ago (before "late" was
        # taken: that one may be its too); nobody lists "dead" (its worker was killed).
        claims.publish("w:1", [tags["claimed"]], sent_at=now - 4, since=now - 60, ttl=60)
        claims.publish("s:1", [], sent_at=now, since=now - 60, ttl=60)
        sweeper = OrphanSweeper(
            client,
            celery,
            queue=settings.worker.queue,
            interval=1,
            lease=3600,
            owner="s:1",
            restore_grace=2,
        )
        off = OrphanSweeper(
            client, celery, queue=settings.worker.queue, interval=1, lease=3600, owner="s:1"
        )
        assert off.restore_unclaimed() == []
        assert sweeper.restore_unclaimed() == ["dead"]
        assert sorted(client.hkeys(UNACKED)) == sorted(
            [tags["claimed"], tags["young"], tags["late"], other]
        )
        assert client.zscore(UNACKED_INDEX, tags["dead"]) is None
        # Back at the front of its priority's list (kombu's consumers pop from the right),
        # marked redelivered, under its own delivery tag.
        (raw,) = client.lrange(redis_queue_keys(queue)[4], -1, -1)
        message = json.loads(raw)
        assert message["headers"]["id"] == "dead" and message["headers"]["redelivered"]
        assert message["properties"]["delivery_tag"] == tags["dead"]
        assert queued_ids(client, settings) == ["dead"]
        again = conn.SimpleQueue(queue, no_ack=False).get(timeout=5)
        assert again.headers["id"] == "dead" and again.delivery_info["redelivered"]
        # Once "w:1" lists its deliveries again (after "late" was taken), "late" is its no
        # more: restored; "claimed" stays.
        claims.publish("w:1", [tags["claimed"]], sent_at=time.time(), since=now - 60, ttl=60)
        assert sweeper.restore_unclaimed() == ["late"]
        assert sweeper.restore_unclaimed() == []
        again.ack()
    print(f"\nrestore: put back {['dead', 'late']}, left the claimed, young and foreign ones")


def test_restore_waits_while_redis_was_just_out_of_reach(
    client: redis.Redis, settings: Settings
) -> None:
    """After an outage every claim may have expired; the sweeper restores nothing until its own
    process has written its claims without a failure for the grace (every worker wrote since)."""
    celery = make_celery(settings)
    queue = model_queue(settings.worker.queue, MODEL)
    claims = DeliveryClaims(client)
    sweeper = OrphanSweeper(
        client,
        celery,
        queue=settings.worker.queue,
        interval=1,
        lease=3600,
        owner="s:1",
        restore_grace=2,
    )
    with celery.connection_for_read() as conn:
        tag = take(celery, conn, queue, "running", 4)
        client.zadd(UNACKED_INDEX, {tag: time.time() - 30})
        assert sweeper.restore_unclaimed() == []  # no claims of its own: cannot tell
        now = time.time()
        claims.publish("s:1", [], sent_at=now, since=now - 1, ttl=60)  # back 1 s ago
        assert sweeper.restore_unclaimed() == []
        assert client.hexists(UNACKED, tag)
        claims.publish("s:1", [], sent_at=now, since=now - 3, ttl=60)
        assert sweeper.restore_unclaimed() == ["running"]
