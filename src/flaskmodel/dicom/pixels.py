"""Read one slice of a series as Hounsfield units, and its own display window.

Owns ``load_hu`` (decode pixel data, apply the modality LUT, replace padding with air) and
``file_window`` (the file's WindowCenter/WindowWidth), plus ``AIR_HU``. A slice is a single-frame
file or one frame of a multi-frame file (``SliceRef.frame_number``); for a frame, the rescale and
the window come from its functional groups (PixelValueTransformationSequence, FrameVOILUTSequence:
its own, else the shared ones, else the top level). Multi-frame files stay parsed in a small
per-process cache (``FRAME_CACHE_FILES``), so each frame is decoded on its own without reading and
parsing the whole file once per frame. Slice paths are checked against the data root before any
file is opened.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut

from flaskmodel.dicom.files import (
    checked_path,
    first_float,
    frame_groups,
    group_item,
    int_or_none,
    read_dataset,
    short_reason,
)
from flaskmodel.dicom.headers import SliceRef
from flaskmodel.errors import DicomReadError, SeriesError

logger = logging.getLogger(__name__)

#: HU written into padding pixels unless the image holds lower genuine values (air).
AIR_HU = -1024.0
#: Multi-frame files kept parsed (pixel data still encoded, so about the file's size each) per
#: process. Two, so that a batch that straddles two files does not read them frame after frame.
FRAME_CACHE_FILES = 2


def load_hu(ref: SliceRef, root: Path) -> np.ndarray:
    """One slice as float32 Hounsfield units, shape ``[rows, columns]``.

    Decodes the pixel data (compressed syntaxes through the installed pydicom plugins; for a frame
    of a multi-frame file only that frame) and applies the slice's own modality LUT exactly as
    ``pydicom.pixels.apply_modality_lut`` does (for a frame: with its functional group's rescale).
    Pixels equal to PixelPaddingValue (or within PixelPaddingRangeLimit) are set to
    ``min(-1024, lowest non-padding HU)``: air, unless the image itself goes lower, so padding
    never looks like tissue after windowing. Raises ``DicomReadError`` naming the file when it does
    not read or decode, and ``SeriesError`` for a multi-frame file read without a frame number, a
    frame it does not have, or multi-sample (colour) images.
    """
    path, rel = checked_path(ref.path, root)
    if ref.frame_number is None:
        ds = read_dataset(path, rel, stop_before_pixels=False)
        frames = int_or_none(ds.get("NumberOfFrames"))
        if frames is not None and frames > 1:
            raise SeriesError(f"'{rel}' is a multi-frame image ({frames} frames); name a frame")
        rescale, what = ds, f"'{rel}'"
    else:
        source = _frame_file(path, rel)
        index = source.index(ref.frame_number, rel)
        ds, rescale, what = source.ds, source.rescale[index], f"frame {ref.frame_number} of '{rel}'"
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID", "unknown") if meta is not None else "unknown"
    try:
        if ref.frame_number is None:
            stored: np.ndarray = ds.pixel_array
        else:
            stored, _ = get_decoder(syntax).as_array(ds, index=ref.frame_number - 1)
        modality: np.ndarray = apply_modality_lut(stored, rescale)
    except Exception as exc:  # decoders raise many types (plugins missing, corrupt stream)
        raise DicomReadError(
            f"cannot decode pixel data of {what} (transfer syntax {syntax}): {short_reason(exc)}"
        ) from exc
    if stored.ndim != 2:
        raise SeriesError(f"{what} has pixel shape {stored.shape}; only 2-D greyscale slices")
    return _fill_padding(np.asarray(modality, dtype=np.float32), stored, ds)


def _fill_padding(hu: np.ndarray, stored: np.ndarray, ds: Any) -> np.ndarray:
    padding = int_or_none(ds.get("PixelPaddingValue"))
    if padding is None:
        return hu
    limit = int_or_none(ds.get("PixelPaddingRangeLimit"))
    low, high = sorted((padding, padding if limit is None else limit))
    mask = (stored >= low) & (stored <= high)
    if mask.any():
        genuine = hu[~mask]
        fill = min(AIR_HU, float(genuine.min())) if genuine.size else AIR_HU
        # Copy first: the modality LUT may have returned the decoder's own buffer.
        hu = hu.copy()
        hu[mask] = fill
    return hu


def file_window(ref: SliceRef, root: Path) -> tuple[float, float] | None:
    """The file's (or the frame's) own first ``(WindowCenter, WindowWidth)``, or ``None`` when
    absent or unusable.

    Multi-valued attributes give their first value; a width that is not positive gives ``None``.
    """
    path, rel = checked_path(ref.path, root)
    if ref.frame_number is not None:
        source = _frame_file(path, rel)
        return source.window[source.index(ref.frame_number, rel)]
    return _window_of(read_dataset(path, rel, stop_before_pixels=True))


def _window_of(item: Any) -> tuple[float, float] | None:
    center = first_float(item.get("WindowCenter"))
    width = first_float(item.get("WindowWidth"))
    if center is None or width is None or not width > 0:
        return None
    return center, width


# --- multi-frame files ------------------------------------------------------------------------


@dataclass(frozen=True)
class _FrameFile:
    """A parsed multi-frame file: the data set (pixel data still encoded) and, per frame, what
    rescales it and its window. Read-only once built, so threads may share it."""

    ds: Any
    rescale: list[Any]  # per frame: the data set holding its RescaleSlope/Intercept
    window: list[tuple[float, float] | None]

    def index(self, frame_number: int, rel: str) -> int:
        if not 1 <= frame_number <= len(self.rescale):
            raise SeriesError(f"'{rel}' has no frame {frame_number} ({len(self.rescale)} frames)")
        return frame_number - 1


_FRAME_FILES: OrderedDict[tuple[Path, int, int], _FrameFile] = OrderedDict()
_FRAME_LOCK = threading.Lock()


def _frame_file(path: Path, rel: str) -> _FrameFile:
    """The parsed multi-frame file, from the cache while the file is unchanged."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise DicomReadError(f"cannot read DICOM file '{rel}': {exc.strerror}") from exc
    cache_key = (path, stat.st_mtime_ns, stat.st_size)
    with _FRAME_LOCK:
        cached = _FRAME_FILES.get(cache_key)
        if cached is not None:
            _FRAME_FILES.move_to_end(cache_key)
            return cached
        ds = read_dataset(path, rel, stop_before_pixels=False)
        try:
            parsed = _parse_frames(ds, rel)
        except SeriesError:
            raise
        except Exception as exc:  # pydicom converts values lazily, so bad values fail here
            raise DicomReadError(f"cannot read the frames of '{rel}': {short_reason(exc)}") from exc
        _FRAME_FILES[cache_key] = parsed
        while len(_FRAME_FILES) > FRAME_CACHE_FILES:
            _FRAME_FILES.popitem(last=False)
        logger.debug("parsed %d frames of %s", len(parsed.rescale), rel)
        return parsed


def _parse_frames(ds: Any, rel: str) -> _FrameFile:
    # pydicom converts raw elements on first access, writing them back into the data set; convert
    # them all here so threads that share the data set only read.
    for _ in ds:
        pass
    groups = frame_groups(ds, rel)
    if groups is None:  # frames without functional groups share the top-level attributes
        frames = int_or_none(ds.get("NumberOfFrames")) or 1
        return _FrameFile(ds, [ds] * frames, [_window_of(ds)] * frames)
    rescale = [group_item(g, "PixelValueTransformationSequence") or ds for g in groups]
    window = [_window_of(group_item(g, "FrameVOILUTSequence") or ds) for g in groups]
    return _FrameFile(ds, rescale, window)
