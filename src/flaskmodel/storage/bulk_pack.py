"""``BulkPacker``: Redis commands with a large argument packed without copying it.

With hiredis installed, redis-py packs every command into one new buffer (hiredis's
``pack_command``). For an argument of a few hundred KiB, a CT slice's request frame (256 KiB),
that took 368 µs a command on this host class, against 5.6 µs at 64 KiB: a buffer that size is
taken from the system and given back at each command (glibc's malloc unmaps or trims it), so
every one of its pages faults in again. It was a third of a web process's CPU per slice. redis-py's
own packer leaves a large argument as it is, a chunk of its own for the socket (2.7 µs). So a
command with an argument of ``BULK`` bytes or more is packed that way, and the rest by hiredis as
before (it is the cheaper one for small commands: 0.7 µs against 2.7).

Every client ``storage.redis`` makes uses it (``OPTIONS``): its pools' connections, and so the
sync calls' ``Link``s, pack with it.
"""

from __future__ import annotations

from typing import Any

from redis._parsers import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.utils import HIREDIS_AVAILABLE

#: Arguments from this size on are sent as they are (at 32 KiB both packers cost about the same).
BULK = 32_768
#: redis-py's own cut-off: smaller pieces are joined into one buffer before they are sent.
_BUFFER_CUTOFF = 6_000
_BINARY = (bytes, bytearray, memoryview)


class BulkPacker:
    """Packs like redis-py's connection would, without copying an argument of ``BULK`` bytes or
    more; stateless, so one serves every connection of a client."""

    def __init__(self) -> None:
        self._small = HiredisRespSerializer() if HIREDIS_AVAILABLE else None
        # As redis-py's connections encode (their defaults, which storage.redis keeps).
        encode = Encoder("utf-8", "strict", False).encode  # type: ignore[no-untyped-call]
        self._large = PythonRespSerializer(_BUFFER_CUTOFF, encode)

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        """The command ``args`` as chunks of the Redis protocol, to be sent in order."""
        if self._small is None:
            return self._large.pack(*args)  # type: ignore[no-untyped-call,no-any-return]
        for arg in args:  # a plain loop: a push of many small frames checks each (34 ns)
            if arg.__class__ in _BINARY and len(arg) >= BULK:
                return self._large.pack(*args)  # type: ignore[no-untyped-call,no-any-return]
        return self._small.pack(*args)  # type: ignore[no-any-return]


#: Connection options that make a redis-py client pack with ``BulkPacker``.
OPTIONS: dict[str, Any] = {"command_packer": BulkPacker()}
