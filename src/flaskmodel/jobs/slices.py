"""``SeriesProgress``: what a series job's chunks hand each other through Redis.

- ``flaskmodel:job:<id>:slices`` hash: the scores of every slice scored so far, keyed by
  ``SliceRef.key`` (the SOPInstanceUID, plus ``:<frame>`` for a frame of a multi-frame file),
  JSON list of floats. Written per batch before progress moves: the resume point of a redelivered
  chunk and of every later one. Deleted once the job's result is written.
- ``flaskmodel:job:<id>:timings`` hash: seconds per stage, summed over the chunks.

Both keys have the job TTL.
"""

from __future__ import annotations

import json

import redis
from redis.client import Pipeline

from flaskmodel.jobs.keys import slices_key, timings_key


class SeriesProgress:
    """The per-slice scores and summed timings of running series jobs."""

    def __init__(self, client: redis.Redis, *, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def scored(self, job_id: str) -> set[str]:
        """The keys of the slices already scored."""
        return {str(name) for name in self._redis.hkeys(slices_key(job_id))}

    def save_in(self, pipe: Pipeline, job_id: str, scores: dict[str, list[float]]) -> None:
        """Queue storing one batch's scores (slice key -> scores) on ``pipe``."""
        pipe.hset(slices_key(job_id), mapping={k: json.dumps(v) for k, v in scores.items()})
        pipe.expire(slices_key(job_id), self._ttl)

    def scores(self, job_id: str) -> dict[str, list[float]]:
        """Every stored slice's scores."""
        raw: dict[str, str] = self._redis.hgetall(slices_key(job_id))  # type: ignore[assignment]
        return {name: json.loads(row) for name, row in raw.items()}

    def clear(self, job_id: str) -> None:
        """Forget the scores (the job's result holds them now)."""
        self._redis.delete(slices_key(job_id))

    def add_timings(self, job_id: str, timings: dict[str, float]) -> dict[str, float]:
        """Add one chunk's seconds per stage to the job's; the totals so far."""
        name = timings_key(job_id)
        pipe = self._redis.pipeline(transaction=True)
        for stage, seconds in timings.items():
            pipe.hincrbyfloat(name, stage, seconds)
        pipe.expire(name, self._ttl)
        pipe.hgetall(name)
        totals: dict[str, str] = pipe.execute()[-1]
        return {stage: float(value) for stage, value in totals.items()}
