"""Slice thumbnails: a windowed HU slice as a small greyscale PNG (numpy and zlib only).

The worker renders these once per series job and caches them in Redis, so the results viewer can
show a slice without the web process ever touching pydicom or TensorFlow.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from flaskmodel.dicom.preprocess import WindowSpec, apply_window, resize

THUMBNAIL_SIDE = 160
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(gray: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of ``gray`` (uint8, shape ``[rows, columns]``)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    rows, columns = gray.shape
    header = struct.pack(">IIBBBBB", columns, rows, 8, 0, 0, 0, 0)  # 8-bit greyscale
    # Every scanline starts with filter type 0 (none).
    raw = np.hstack([np.zeros((rows, 1), np.uint8), gray]).tobytes()
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def render_thumbnail(hu: np.ndarray, window: WindowSpec, side: int = THUMBNAIL_SIDE) -> bytes:
    """``hu`` windowed, scaled so its longer side is ``side`` pixels, as PNG bytes."""
    rows, columns = hu.shape
    scale = side / max(rows, columns)
    size = (max(1, round(rows * scale)), max(1, round(columns * scale)))
    # A display, not model input: the antialiased filter keeps a 512 → 160 shrink free of
    # aliasing whatever the model's own resize is.
    image = resize(apply_window(hu, window), size, "antialias")
    return encode_png(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
