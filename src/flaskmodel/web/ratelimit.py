"""Per-caller rate limits, shared by every web process through Redis, and the ``RateLimit``
header fields that tell a caller where it stands.

A GCRA bucket per caller (``storage.gcra``): one Lua script reads and writes the caller's key
``flaskmodel:rate:<caller>``, so gunicorn workers on any number of hosts share the bucket
exactly, and Redis's clock is the only clock (no skew between web hosts). A request is counted
either in the push of its sync call's frame (``Ticket``: no round trip of its own, and a refused
request never reaches a worker) or here: the checks of one web process's concurrent requests go
to Redis together, one script call deciding them all, in order, in one round trip
(``storage.coalesce``), so a limit costs a busy process a fraction of a round trip per request.

The header fields follow draft-ietf-httpapi-ratelimit-headers-11 (the ``RateLimit-Policy`` and
``RateLimit`` pair, unchanged since -08), computed from the script's one reply:
``RateLimit-Policy: "default";q=<burst>;w=<seconds to refill an empty bucket>`` and
``RateLimit: "default";r=<requests allowed now>;t=<seconds until one more is>`` (on a refusal
``r=0`` and ``t`` equals ``Retry-After``).
"""

from __future__ import annotations

from typing import NamedTuple

import redis

from flaskmodel.storage.coalesce import Coalescer
from flaskmodel.storage.gcra import CHECK_SCRIPT, Bucket, Ticket
from flaskmodel.storage.gcra import Verdict as Count
from flaskmodel.storage.pipelines import execute, queue_script
from flaskmodel.storage.redis import key

_POLICY = "default"
_US = 1_000_000

Headers = tuple[tuple[str, str], ...]


class Verdict(NamedTuple):
    """A request's fate: ``wait`` is None when allowed, else the seconds until one would be;
    ``headers`` are its ``RateLimit-Policy`` and ``RateLimit`` fields."""

    wait: float | None
    headers: Headers


class RateLimiter:
    """``verdict(ticket(caller))``: the ``Verdict`` on one more request of ``caller``, its count
    made by whoever needs it first: the push of its sync call, or one script call here,
    pipelined with the concurrent checks of this process."""

    def __init__(self, client: redis.Redis, *, per_second: float, burst: int) -> None:
        self.bucket = Bucket(per_second, burst)
        window = -(-burst * self.bucket.interval // _US)  # seconds, rounded up: never overstated
        self._policy = ("RateLimit-Policy", f'"{_POLICY}";q={burst};w={window}')
        self._client = client
        self._script = client.register_script(CHECK_SCRIPT)
        self._checks: Coalescer[str, Count] = Coalescer(self._run, "rate-limit")

    def _run(self, keys: list[str]) -> list[Count]:
        """One script call decides every request of ``keys``, in order."""
        pipe = self._client.pipeline(transaction=False)
        queue_script(pipe, self._script, keys, self.bucket.args())
        (flat,) = execute(pipe, self._script)
        return list(zip(flat[::2], flat[1::2], strict=True))

    def ticket(self, caller: str) -> Ticket:
        """One request of ``caller``, not counted yet."""
        return Ticket(key("rate", caller), self.bucket, self._checks.call)

    def verdict(self, ticket: Ticket) -> Verdict:
        """The ``Verdict`` of ``ticket``'s count (made now unless it was already)."""
        bucket = self.bucket
        count = ticket.decide()
        interval = bucket.interval
        slack = bucket.tolerance - int(count[1])  # negative when refused: minus the wait
        wait = bucket.wait(count)
        if wait is None:
            remaining, until_next = slack // interval + 1, interval - slack % interval
        else:
            remaining, until_next = 0, max(-slack, 1)
        seconds = -(-until_next // _US)  # rounded up, as Retry-After is
        return Verdict(
            wait, (self._policy, ("RateLimit", f'"{_POLICY}";r={remaining};t={seconds}'))
        )
