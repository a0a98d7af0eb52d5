"""Per-caller rate limits, shared by every web process through Redis.

GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): each caller's key
``flaskmodel:rate:<caller>`` holds its *theoretical arrival time* (TAT) in microseconds of Redis's
own clock. A request is allowed when ``TAT - now <= (burst - 1) * interval``, and then moves TAT
on by one interval; otherwise it is refused with the wait until it would fit. One Lua script
reads and writes the key, so gunicorn workers on any number of hosts share the bucket exactly,
and Redis's clock is the only clock (no skew between web hosts). The key expires once the bucket
is full again.
"""

from __future__ import annotations

import logging

import redis

from flaskmodel.storage.redis import key

logger = logging.getLogger(__name__)

# KEYS: the caller's TAT key. ARGV: interval (µs per request), burst. Returns {allowed (0/1),
# µs to wait before the next request would be allowed (0 when allowed)}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = (tonumber(ARGV[2]) - 1) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, tat - now - tolerance}
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {1, 0}
"""


class RateLimiter:
    """``check(caller)``: None when allowed, else the seconds to wait."""

    def __init__(self, client: redis.Redis, *, per_second: float, burst: int) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self._interval = max(1, round(1_000_000 / per_second))
        self._burst = burst
        self._script = client.register_script(_GCRA)

    def check(self, caller: str) -> float | None:
        allowed, wait_us = self._script(
            keys=[key("rate", caller)], args=[self._interval, self._burst]
        )
        if allowed:
            return None
        return max(int(wait_us), 1) / 1_000_000
