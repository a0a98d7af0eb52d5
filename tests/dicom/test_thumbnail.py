"""Thumbnails are valid PNGs of the windowed slice."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from flaskmodel.dicom.preprocess import WindowSpec
from flaskmodel.dicom.thumbnail import encode_png, render_thumbnail


def decode_png(data: bytes) -> np.ndarray:
    """A minimal decoder for the 8-bit greyscale, filter-0 PNGs we write."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 0)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, width + 1)
    assert not raw[:, 0].any()
    return raw[:, 1:]


def test_png_round_trip() -> None:
    image = (np.arange(12 * 7) % 256).astype(np.uint8).reshape(12, 7)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image.astype(np.float32))


def test_thumbnail_is_windowed_and_scaled() -> None:
    hu = np.full((512, 256), -1000.0, np.float32)
    hu[:, 128:] = 240.0  # above a 40/400 window: white
    png = decode_png(render_thumbnail(hu, WindowSpec(center=40, width=400), side=64))
    assert png.shape == (64, 32)
    assert png[:, :14].max() == 0 and png[:, 18:].min() == 255
