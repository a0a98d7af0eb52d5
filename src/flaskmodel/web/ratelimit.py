"""Per-caller rate limits, shared by every web process through Redis, and the ``RateLimit``
header fields that tell a caller where it stands.

GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): each caller's key
``flaskmodel:rate:<caller>`` holds its *theoretical arrival time* (TAT) in microseconds of Redis's
own clock. A request is allowed when ``TAT - now <= (burst - 1) * interval``, and then moves TAT
on by one interval; otherwise it is refused with the wait until it would fit. One Lua script
reads and writes the key, so gunicorn workers on any number of hosts share the bucket exactly,
and Redis's clock is the only clock (no skew between web hosts). The key expires once the bucket
is full again. The checks of one web process's concurrent requests go to Redis together: one
script call decides them all, in order, in one round trip (``storage.coalesce``), so a limit
costs a busy process a fraction of a round trip per request.

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
from flaskmodel.storage.pipelines import execute, queue_script
from flaskmodel.storage.redis import key

# KEYS: one TAT key per request checked (a caller's key once per request of it, in order).
# ARGV: interval (µs per request), burst. Returns, per key, allowed (0/1) and TAT - now in µs
# after its decision.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = (tonumber(ARGV[2]) - 1) * interval
local out = {}
for i, k in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', k) or '0')
  if tat < now then tat = now end
  if tat - now > tolerance then
    out[2 * i - 1] = 0
  else
    tat = tat + interval
    redis.call('SET', k, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
    out[2 * i - 1] = 1
  end
  out[2 * i] = tat - now
end
return out
"""
_POLICY = "default"
_US = 1_000_000

Headers = tuple[tuple[str, str], ...]


class Verdict(NamedTuple):
    """A request's fate: ``wait`` is None when allowed, else the seconds until one would be;
    ``headers`` are its ``RateLimit-Policy`` and ``RateLimit`` fields."""

    wait: float | None
    headers: Headers


class RateLimiter:
    """``check(caller)``: the ``Verdict`` on one more request of ``caller`` (one script call,
    pipelined with the concurrent checks of this process)."""

    def __init__(self, client: redis.Redis, *, per_second: float, burst: int) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self._interval = max(1, round(_US / per_second))
        self._burst = burst
        self._tolerance = (burst - 1) * self._interval
        window = -(-burst * self._interval // _US)  # seconds, rounded up: q/w never overstates
        self._policy = ("RateLimit-Policy", f'"{_POLICY}";q={burst};w={window}')
        self._client = client
        self._script = client.register_script(_GCRA)
        self._checks: Coalescer[str, tuple[int, int]] = Coalescer(self._run, "rate-limit")

    def _run(self, callers: list[str]) -> list[tuple[int, int]]:
        """One script call decides every request of ``callers``, in order."""
        pipe = self._client.pipeline(transaction=False)
        queue_script(
            pipe, self._script, [key("rate", c) for c in callers], [self._interval, self._burst]
        )
        (flat,) = execute(pipe, self._script)
        return list(zip(flat[::2], flat[1::2], strict=True))

    def check(self, caller: str) -> Verdict:
        allowed, ahead = self._checks.call(caller)
        interval = self._interval
        slack = self._tolerance - int(ahead)  # negative when refused: minus the wait
        if allowed:
            remaining, until_next, wait = slack // interval + 1, interval - slack % interval, None
        else:
            remaining, until_next = 0, max(-slack, 1)
            wait = until_next / _US
        seconds = -(-until_next // _US)  # rounded up, as Retry-After is
        return Verdict(
            wait, (self._policy, ("RateLimit", f'"{_POLICY}";r={remaining};t={seconds}'))
        )
