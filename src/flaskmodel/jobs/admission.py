"""Admission control: a bound on each model's unfinished jobs, priced by measured throughput.

Keys (each refreshed on write, so an idle model's keys expire on their own):

- ``flaskmodel:pending:<model>`` sorted set: ids of the model's unfinished (queued or running)
  jobs, scored by admission time. A submit adds its job atomically against the bound
  (``jobs.max_pending``); the worker removes it when the job ends, a cancel when it cancels.
  Members older than the job TTL (a job that expired unfinished) are pruned on every admit.
- ``flaskmodel:finished:<model>`` sorted set: ids of the jobs that ended in the last
  ``WINDOW_SECONDS``, scored by end time; their count over the span they cover is the model's
  measured throughput, written by the workers.

A refused submit raises ``Overloaded`` (429) whose ``retry_after`` is the time the workers need,
at the measured throughput, to clear the jobs queued ahead (at least 1 s, at most 300 s; 10 s
while no job has ended recently).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.client import Pipeline

from flaskmodel.errors import Overloaded
from flaskmodel.storage.pipelines import execute, queue_script
from flaskmodel.storage.redis import key

WINDOW_SECONDS = 60.0
# No job ended within the window: the workers are stalled or just starting; ask for a while.
UNKNOWN_RATE_RETRY_AFTER = 10.0
MAX_RETRY_AFTER = 300.0

# KEYS: pending set. ARGV: now, prune-before score, bound, member, ttl.
# Returns {1, depth after} when admitted, {0, depth} when the bound is reached.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local depth = redis.call('ZCARD', KEYS[1])
if depth >= tonumber(ARGV[3]) then return {0, depth} end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, depth + 1}
"""


def pending_key(model: str) -> str:
    return key("pending", model)


def finished_key(model: str) -> str:
    return key("finished", model)


class Admission:
    """Admits jobs against the per-model bound and records their ends (throughput)."""

    def __init__(self, client: redis.Redis, *, max_pending: int, ttl: int) -> None:
        self._redis = client
        self._max = max_pending
        self._ttl = ttl
        self._admit = client.register_script(_ADMIT)

    def admit(self, model: str, job_id: str) -> int:
        """Count ``job_id`` against ``model``'s bound; the depth, or ``Overloaded`` when full."""
        keys, args = self._admit_args(model, job_id)
        return self.check(model, self._admit(keys=keys, args=args))

    def admit_in(self, pipe: Pipeline, model: str, job_id: str) -> None:
        """Queue ``admit`` without the check on ``pipe`` (run it with ``execute``; pass its
        reply to ``check``)."""
        queue_script(pipe, self._admit, *self._admit_args(model, job_id))

    def execute(self, pipe: Pipeline) -> list[Any]:
        """Run a pipeline holding ``admit_in`` calls."""
        return execute(pipe, self._admit)

    def _admit_args(self, model: str, job_id: str) -> tuple[list[str], list[Any]]:
        now = time.time()
        return [pending_key(model)], [now, now - self._ttl, self._max, job_id, self._ttl]

    def check(self, model: str, reply: list[int]) -> int:
        """The depth after an admit whose reply is ``reply``; ``Overloaded`` when it was full."""
        admitted, depth = reply
        if not admitted:
            wait = self.retry_after(model, int(depth))
            raise Overloaded(
                f"model '{model}' has {depth} unfinished jobs (limit {self._max}); "
                f"retry in about {wait:.0f} s",
                retry_after=wait,
            )
        return int(depth)

    def release(self, model: str, job_id: str, *, ended: bool = True) -> None:
        """Stop counting ``job_id``; ``ended`` also counts it towards the throughput."""
        pipe = self._redis.pipeline(transaction=True)
        self.release_in(pipe, model, job_id, ended=ended)
        pipe.execute()

    @staticmethod
    def release_in(pipe: Pipeline, model: str, job_id: str, *, ended: bool = True) -> None:
        """Queue ``release`` on ``pipe``."""
        now = time.time()
        pipe.zrem(pending_key(model), job_id)
        if ended:
            pipe.zadd(finished_key(model), {job_id: now})
            pipe.zremrangebyscore(finished_key(model), "-inf", now - WINDOW_SECONDS)
            pipe.expire(finished_key(model), int(WINDOW_SECONDS * 2))

    def depth(self, model: str) -> int:
        return int(self._redis.zcard(pending_key(model)))

    def throughput(self, model: str) -> float | None:
        """Jobs per second ended over the last window; None when too few ended to tell."""
        now = time.time()
        ends = self._redis.zrangebyscore(
            finished_key(model), now - WINDOW_SECONDS, "+inf", withscores=True
        )
        if len(ends) < 2:
            return None
        span = max(now - float(ends[0][1]), 1.0)
        return len(ends) / span

    def retry_after(self, model: str, depth: int) -> float:
        """Seconds the workers need, at the measured rate, to clear the ``depth`` jobs ahead."""
        rate = self.throughput(model)
        if rate is None:
            return UNKNOWN_RATE_RETRY_AFTER
        return min(max(depth / rate, 1.0), MAX_RETRY_AFTER)
