"""GCRA buckets in Redis (the generic cell rate algorithm, a token bucket kept as one timestamp):
the decision in Lua, a bucket's parameters, and ``Ticket``, one request's count made late.

Each caller's key ``flaskmodel:rate:<caller>`` holds its *theoretical arrival time* (TAT) in
microseconds of Redis's own clock. A request is allowed when ``TAT - now <= (burst - 1) *
interval``, and then moves TAT on by one interval; otherwise it is refused with the wait until it
would fit. The key expires once the bucket is full again. ``DECIDE`` is that step as a Lua
function, shared by the limiter's own script (``web.ratelimit``) and the sync calls' push, which
counts a request in the same script call that queues its frame (``sync.frames``): a request
whose count is made there costs no round trip of its own, and a refused one never reaches a
worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flaskmodel.errors import RateLimited

_US = 1_000_000

#: ``decide(key, now, interval, tolerance)`` -> allowed (0/1), TAT - now after the decision (µs).
DECIDE = """
local function decide(k, now, interval, tolerance)
  local tat = tonumber(redis.call('GET', k) or '0')
  if tat < now then tat = now end
  if tat - now > tolerance then return 0, tat - now end
  tat = tat + interval
  redis.call('SET', k, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  return 1, tat - now
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

#: KEYS: one TAT key per request checked (a caller's key once per request of it, in order).
#: ARGV: interval (µs per request), burst. Returns, per key, allowed (0/1) and TAT - now in µs.
CHECK_SCRIPT = (
    DECIDE
    + """
local now, interval = clock(), tonumber(ARGV[1])
local tolerance = (tonumber(ARGV[2]) - 1) * interval
local out = {}
for i, k in ipairs(KEYS) do
  out[2 * i - 1], out[2 * i] = decide(k, now, interval, tolerance)
end
return out
"""
)

Verdict = tuple[int, int]
"""A script's answer for one request: allowed (0/1) and TAT - now after it (µs)."""


@dataclass(frozen=True)
class Bucket:
    """A rate limit: ``per_second`` requests on average, bursts of ``burst``."""

    per_second: float
    burst: int
    interval: int = field(init=False)  # µs per request
    tolerance: int = field(init=False)  # µs TAT may run ahead of now

    def __post_init__(self) -> None:
        if self.per_second <= 0:
            raise ValueError("per_second must be positive")
        interval = max(1, round(_US / self.per_second))
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "tolerance", (self.burst - 1) * interval)

    def args(self) -> list[int]:
        """The scripts' ARGV for this bucket."""
        return [self.interval, self.burst]

    def wait(self, verdict: Verdict) -> float | None:
        """Seconds until a refused request would be allowed; None when it was allowed."""
        allowed, ahead = verdict
        return None if allowed else max(int(ahead) - self.tolerance, 1) / _US

    def refusal(self, wait: float) -> RateLimited:
        return RateLimited(
            f"rate limit of {self.per_second:g} requests per second (burst {self.burst}) "
            f"reached; retry in {wait:.2f} s",
            retry_after=wait,
        )


@dataclass(eq=False)
class Ticket:
    """One request's count against ``key``'s ``bucket``, not made yet. Made by whoever needs it
    first: the sync call's push (which sets ``verdict``), or ``decide`` (``check``: the
    limiter's own round trip). Nothing with an effect may run for the request before then."""

    key: str
    bucket: Bucket
    check: Callable[[str], Verdict]
    verdict: Verdict | None = None

    def decide(self) -> Verdict:
        """The count's verdict, made now unless it was already."""
        if self.verdict is None:
            self.verdict = self.check(self.key)
        return self.verdict

    def admit(self) -> None:
        """Make the count if not yet made; ``RateLimited`` when it refused the request."""
        wait = self.bucket.wait(self.decide())
        if wait is not None:
            raise self.bucket.refusal(wait)

    @property
    def refused(self) -> bool:
        return self.verdict is not None and not self.verdict[0]
