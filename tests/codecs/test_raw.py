"""The synchronous protocol's binary frames: every dtype round-trips, bad frames are refused, and
pushed frames stay out of Redis's AOF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from flaskmodel.codecs import raw
from flaskmodel.errors import InvalidInput
from flaskmodel.storage.gcra import Bucket
from flaskmodel.storage.link import Link
from flaskmodel.sync import frames
from tests import procs


def test_every_dtype_round_trips() -> None:
    tensors = {
        "f32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "f16": np.array([[0.5], [1.5]], np.float16),
        "f64": np.array([1e300, -2.5]),
        "i64": np.array([[-(2**62), 7]], np.int64),
        "u8": np.array([0, 255], np.uint8),
        "bool": np.array([[True, False]]),
        "big_endian": np.array([1.0, 2.0], dtype=">f4"),
        "text": np.array([[b"", b"caf\xc3\xa9"], [b"\x00\xff", b"x" * 300]], dtype=object),
        "scalar": np.array(3.0, np.float32),
    }
    blob = raw.encode({"id": "r1", "model": "m", "deadline": 1.5}, tensors)
    assert blob.startswith(raw.MAGIC)
    decoded = raw.decode(blob)
    assert decoded.header == {"id": "r1", "model": "m", "deadline": 1.5}
    assert list(decoded.tensors) == list(tensors)
    for name, value in tensors.items():
        got = decoded.tensors[name]
        assert got.shape == value.shape, name
        if value.dtype == object:
            assert got.tolist() == value.tolist()
        else:
            assert got.dtype == value.dtype.newbyteorder("<"), name
            np.testing.assert_array_equal(got, value)


def test_header_only_frame() -> None:
    decoded = raw.decode(raw.encode({"id": "x", "error": {"type": "t", "message": "m"}}))
    assert decoded.tensors == {} and decoded.header["error"]["type"] == "t"


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"nope" + b"\x00" * 8,
        raw.MAGIC + b"\x05\x00\x00\x00{bad}",
        raw.encode({}, {"x": np.zeros(4, np.float32)})[:-1],
        raw.encode({}, {"x": np.zeros(4, np.float32)}) + b"!",
    ],
)
def test_bad_frames_are_refused(blob: bytes) -> None:
    with pytest.raises(InvalidInput):
        raw.decode(blob)


def test_string_data_is_checked() -> None:
    packed = raw.pack_strings(np.array([b"ab", b"c"], dtype=object))
    assert packed == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    with pytest.raises(InvalidInput, match="ends after 1"):
        raw.unpack_strings(packed[:6], 2, "t")
    with pytest.raises(InvalidInput, match="left after"):
        raw.unpack_strings(packed + b"z", 2, "t")
    with pytest.raises(InvalidInput, match="runs past"):
        raw.unpack_strings(b"\x09\x00\x00\x00ab", 1, "t")


def test_pushed_frames_keep_their_order_and_ttl_and_stay_out_of_the_aof(
    tmp_path: Path,
) -> None:
    proc, url = procs.start_redis(tmp_path / "redis", appendonly=True)
    try:
        client = redis.Redis.from_url(url)
        link = Link(client)
        push = frames.register_push(client)
        items = [raw.encode({"id": f"r{i}"}, {"x": np.full(4, i, np.float32)}) for i in range(3)]
        items += [b"SECRET-PAYLOAD-%d" % i for i in range(2500)]  # past one LPUSH's 1,000
        link.run([frames.push_command(push, "flaskmodel:sync:m", items, 30)], [push])
        assert 0 < client.ttl("flaskmodel:sync:m") <= 30
        popped = client.rpop("flaskmodel:sync:m", len(items))
        assert popped == items  # LPUSH + RPOP: first in, first out
        # The gated push: each request's rate-limit count is logged, its frame is not.
        gated = frames.register_gated_push(client)
        counted = [(b"GATED-PAYLOAD-%d" % i, "flaskmodel:rate:key:aof-test") for i in range(3)]
        command = frames.gated_push_command(gated, "flaskmodel:sync:g", counted, Bucket(1, 2), 30)
        (verdicts,) = link.run([command], [gated])
        assert verdicts[::2] == [1, 1, 0]  # a burst of 2
        assert client.rpop("flaskmodel:sync:g", 3) == [b"GATED-PAYLOAD-0", b"GATED-PAYLOAD-1"]
        client.set("marker-after-the-push", "1")
        aof = tmp_path / "redis" / "appendonlydir"

        def logged() -> bytes:
            return b"".join(p.read_bytes() for p in aof.glob("*.aof"))

        procs.wait_for(lambda: b"marker-after-the-push" in logged(), 10, "the AOF write", proc)
        assert b"SECRET-PAYLOAD" not in logged() and b'"r1"' not in logged()
        assert b"GATED-PAYLOAD" not in logged() and b"flaskmodel:rate:key:aof-test" in logged()
        link.close()
        client.close()
    finally:
        procs.stop(proc)
