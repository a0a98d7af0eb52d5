"""``BulkPacker``: the bytes Redis is sent are the protocol's, whatever packs them, and the
clients ``storage.redis`` makes use it, a large value making the round trip through a real
Redis by a pooled connection and by a sync calls' ``Link``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.connection import HiredisRespSerializer, PythonRespSerializer

from flaskmodel.settings import Settings
from flaskmodel.storage.bulk_pack import BULK, BulkPacker
from flaskmodel.storage.link import Link
from flaskmodel.storage.redis import connect, connect_frames


def canonical(*args: Any) -> bytes:
    """The command as redis-py's Python packer writes it (the protocol, in one piece)."""

    def encode(value: Any) -> bytes:
        binary = isinstance(value, bytes | bytearray | memoryview)
        return bytes(value) if binary else str(value).encode()

    return b"".join(bytes(chunk) for chunk in PythonRespSerializer(6000, encode).pack(*args))


IDS = ["get", "set-ex", "many-small", "just-below", "bulk-mixed", "bytearray", "memoryview", "utf8"]


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "k"),
        ("SET", "k", "v", "EX", 30),
        ("EVALSHA", "a" * 40, 1, "q", 30, *[os.urandom(200) for _ in range(64)]),
        ("LPUSH", "q", os.urandom(BULK - 1)),
        ("LPUSH", "q", os.urandom(BULK), b"small", os.urandom(3 * BULK)),
        ("SET", "k", bytearray(os.urandom(2 * BULK))),
        ("SET", "k", memoryview(os.urandom(2 * BULK))),
        ("SET", "ключ", "значение"),
    ],
    ids=IDS,
)
def test_packs_the_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    chunks = BulkPacker().pack(*args)
    assert b"".join(bytes(chunk) for chunk in chunks) == canonical(*args)


def test_a_bulk_argument_is_sent_as_it_is_and_small_commands_go_to_hiredis() -> None:
    frame = os.urandom(4 * BULK)
    chunks = BulkPacker().pack("LPUSH", "q", frame)
    assert any(chunk is frame for chunk in chunks)  # not copied into a new buffer
    small = ("EVALSHA", "a" * 40, 1, "q", os.urandom(BULK - 1))
    assert BulkPacker().pack(*small) == HiredisRespSerializer().pack(*small)


def test_the_clients_round_trip_large_values_through_redis(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    text = connect(settings)
    frames = connect_frames(settings, max_connections=4)
    key = f"test:bulk:{uuid.uuid4().hex}"
    value = os.urandom(8 * BULK)
    try:
        for client in (text, frames):
            connection = client.connection_pool.get_connection()
            assert isinstance(connection._command_packer, BulkPacker)
            client.connection_pool.release(connection)
        frames.set(key, value)
        assert frames.get(key) == value
        text.set(key, "é" * BULK)
        assert text.get(key) == "é" * BULK
        link = Link(frames)
        try:
            replies = link.run([("SET", key, value), ("STRLEN", key), ("GET", key)])
        finally:
            link.close()
        assert replies == [b"OK", len(value), value]
    finally:
        text.delete(key)
        text.close()
        frames.close()
