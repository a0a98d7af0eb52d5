"""The names of the job keys: the one place they are built (``tests/test_job_keys.py`` fails on
any module outside ``flaskmodel.jobs`` that builds one).

- ``flaskmodel:job:<id>`` hash: the job record (``JobStore``, fields in its docstring).
- ``flaskmodel:job:<id>:done`` list: the end notice a waiter blocks on.
- ``flaskmodel:job:<id>:slices`` / ``:timings`` hashes: a running series job's per-slice scores
  and summed timings (``SeriesProgress``).
- ``flaskmodel:result:<id>`` string: the result document.
- ``flaskmodel:idem:<sha256>`` string: the job id an ``Idempotency-Key`` made.
- ``flaskmodel:jobs`` and ``flaskmodel:jobs:owner:<key id>`` sorted sets: the newest job ids.
"""

from __future__ import annotations

import hashlib

from flaskmodel.storage.redis import key

# Sorted set of job ids by creation time (the jobs listing, the results viewer, /metrics).
RECENT = key("jobs")


def record_key(job_id: str) -> str:
    return key("job", job_id)


def result_key(job_id: str) -> str:
    return key("result", job_id)


def done_key(job_id: str) -> str:
    """The list a job's end is announced on (``BLPOP`` it to wait without polling)."""
    return key("job", job_id, "done")


def slices_key(job_id: str) -> str:
    return key("job", job_id, "slices")


def timings_key(job_id: str) -> str:
    return key("job", job_id, "timings")


def idem_key(scoped: str) -> str:
    """The key of an idempotency key already scoped to its owner."""
    return key("idem", hashlib.sha256(scoped.encode()).hexdigest())


def owner_index(owner: str) -> str:
    """The sorted set of one API key's jobs by creation time."""
    return key("jobs", "owner", owner)
