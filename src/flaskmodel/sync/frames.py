"""The lean Redis protocol of synchronous calls: its keys and its binary frames.

A web process ``LPUSH``es request frames to ``flaskmodel:sync:<model>``, each header naming the
process's reply list ``flaskmodel:replies:<channel>`` (``reply_to``); a worker process ``BRPOP``s
the requests, computes them (through the model's dynamic batcher) and ``LPUSH``es the reply
frames to those lists, refreshing their short TTL (see ``flaskmodel.sync.channel``). Both pushes
go through ``PUSH_SCRIPT``, which keeps frames out of the AOF and the replicas. A request whose
rate-limit count is still to be made (``storage.gcra.Ticket``) is pushed by ``GATED_PUSH_SCRIPT``
instead, which counts it first and queues its frame only when its caller's bucket allows it.

The frames themselves are ``flaskmodel.codecs.raw``'s.
"""

from __future__ import annotations

import redis
from redis.commands.core import Script

from flaskmodel.storage.gcra import DECIDE, Bucket
from flaskmodel.storage.link import Command
from flaskmodel.storage.redis import key


def sync_queue_key(model: str) -> str:
    """The list a model's synchronous requests wait in: ``flaskmodel:sync:<model>``."""
    return key("sync", model)


def reply_list_key(channel: str) -> str:
    """Where one web process's replies go: ``flaskmodel:replies:<channel>``."""
    return key("replies", channel)


# LPUSH of frames and EXPIRE of their list, kept out of the AOF and the replicas (REPL_NONE): a
# synchronous call is at-most-once and dead after its deadline, so replaying it after a restart is
# worthless, while logging it was most of Redis's work per call (a CT slice: a 256 KiB AOF write
# per request). The pops are still logged; replayed, they pop nothing. ``push(key, items, first,
# ttl)``: ``items[first..]`` so pushed (1,000 to an LPUSH); both scripts end with it.
_PUSH = """
local function push(key, items, first, ttl)
  redis.set_repl(redis.REPL_NONE)
  for i = first, #items, 1000 do
    redis.call('LPUSH', key, unpack(items, i, math.min(i + 999, #items)))
  end
  redis.call('EXPIRE', key, ttl)
end
"""
PUSH_SCRIPT = _PUSH + "push(KEYS[1], ARGV, 2, ARGV[1])\n"


def register_push(client: redis.Redis) -> Script:
    """``PUSH_SCRIPT`` registered on ``client`` (its commands made by ``push_command``)."""
    return client.register_script(PUSH_SCRIPT)


def push_command(push: Script, list_key: str, items: list[bytes], ttl: int) -> Command:
    """The push of ``items`` to ``list_key`` (as ``LPUSH``, oldest first) and its TTL, neither
    logged (run it with ``storage.link.Link.run(..., [push])``)."""
    return ("EVALSHA", push.sha, 1, list_key, ttl, *items)


# KEYS[1]: the list; KEYS[2..]: each frame's rate-limit key. ARGV: TTL, interval, burst, the
# frames. Counts each request (replicated and logged, as the limiter's own script does), pushes
# the allowed ones as ``PUSH_SCRIPT`` does, and answers allowed (0/1) and TAT - now per frame.
GATED_PUSH_SCRIPT = (
    DECIDE
    + _PUSH
    + """
local now, interval = clock(), tonumber(ARGV[2])
local tolerance = (tonumber(ARGV[3]) - 1) * interval
local out, allowed = {}, {}
for i = 2, #KEYS do
  local ok, ahead = decide(KEYS[i], now, interval, tolerance)
  out[2 * i - 3], out[2 * i - 2] = ok, ahead
  if ok == 1 then allowed[#allowed + 1] = ARGV[i + 2] end
end
push(KEYS[1], allowed, 1, ARGV[1])
return out
"""
)


def register_gated_push(client: redis.Redis) -> Script:
    """``GATED_PUSH_SCRIPT`` registered on ``client`` (its commands made by
    ``gated_push_command``)."""
    return client.register_script(GATED_PUSH_SCRIPT)


def gated_push_command(
    push: Script, list_key: str, items: list[tuple[bytes, str]], bucket: Bucket, ttl: int
) -> Command:
    """The push of each ``(frame, rate-limit key)`` of ``items`` that its bucket allows; its
    reply: allowed (0/1) and TAT - now (µs) per item, flat."""
    keys = [rate_key for _, rate_key in items]
    frames_ = [frame for frame, _ in items]
    return ("EVALSHA", push.sha, 1 + len(keys), list_key, *keys, ttl, *bucket.args(), *frames_)
