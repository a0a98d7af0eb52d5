"""The synchronous protocol's binary frames: every dtype round-trips, bad frames are refused."""

from __future__ import annotations

import numpy as np
import pytest

from flaskmodel import frames
from flaskmodel.errors import InvalidInput


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
    raw = frames.encode({"id": "r1", "model": "m", "deadline": 1.5}, tensors)
    assert raw.startswith(frames.MAGIC)
    decoded = frames.decode(raw)
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
    decoded = frames.decode(frames.encode({"id": "x", "error": {"type": "t", "message": "m"}}))
    assert decoded.tensors == {} and decoded.header["error"]["type"] == "t"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"nope" + b"\x00" * 8,
        frames.MAGIC + b"\x05\x00\x00\x00{bad}",
        frames.encode({}, {"x": np.zeros(4, np.float32)})[:-1],
        frames.encode({}, {"x": np.zeros(4, np.float32)}) + b"!",
    ],
)
def test_bad_frames_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        frames.decode(raw)


def test_string_data_is_checked() -> None:
    packed = frames.pack_strings(np.array([b"ab", b"c"], dtype=object))
    assert packed == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
    with pytest.raises(InvalidInput, match="ends after 1"):
        frames.unpack_strings(packed[:6], 2, "t")
    with pytest.raises(InvalidInput, match="left after"):
        frames.unpack_strings(packed + b"z", 2, "t")
    with pytest.raises(InvalidInput, match="runs past"):
        frames.unpack_strings(b"\x09\x00\x00\x00ab", 1, "t")
