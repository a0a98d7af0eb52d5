"""Read one slice of a series as Hounsfield units, and its own display window.

Owns ``load_hu`` (decode pixel data, apply the modality LUT, replace padding with air) and
``file_window`` (the file's WindowCenter/WindowWidth), plus ``AIR_HU``. Slice paths are checked
against the data root before any file is opened.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.pixels.processing import apply_modality_lut

from flaskmodel.dicom.files import (
    checked_path,
    first_float,
    int_or_none,
    read_dataset,
    short_reason,
)
from flaskmodel.dicom.headers import SliceRef
from flaskmodel.errors import DicomReadError, SeriesError

logger = logging.getLogger(__name__)

#: HU written into padding pixels unless the image holds lower genuine values (air).
AIR_HU = -1024.0


def load_hu(ref: SliceRef, root: Path) -> np.ndarray:
    """One slice as float32 Hounsfield units, shape ``[rows, columns]``.

    Decodes the pixel data (compressed syntaxes through the installed pydicom plugins) and applies
    the slice's own modality LUT exactly as ``pydicom.pixels.apply_modality_lut`` does. Pixels
    equal to PixelPaddingValue (or within PixelPaddingRangeLimit) are set to
    ``min(-1024, lowest non-padding HU)``: air, unless the image itself goes lower, so padding
    never looks like tissue after windowing. Raises ``DicomReadError`` naming the file when it does
    not read or decode, and ``SeriesError`` for multi-frame or multi-sample (colour) images.
    """
    path, rel = checked_path(ref.path, root)
    ds = read_dataset(path, rel, stop_before_pixels=False)
    frames = int_or_none(ds.get("NumberOfFrames"))
    if frames is not None and frames > 1:
        raise SeriesError(f"'{rel}' is a multi-frame image ({frames} frames); not supported")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID", "unknown") if meta is not None else "unknown"
    try:
        stored: np.ndarray = ds.pixel_array
        modality: np.ndarray = apply_modality_lut(stored, ds)
    except Exception as exc:  # decoders raise many types (plugins missing, corrupt stream)
        raise DicomReadError(
            f"cannot decode pixel data of '{rel}' (transfer syntax {syntax}): {short_reason(exc)}"
        ) from exc
    if stored.ndim != 2:
        raise SeriesError(f"'{rel}' has pixel shape {stored.shape}; only 2-D greyscale slices")
    hu = np.asarray(modality, dtype=np.float32)

    padding = int_or_none(ds.get("PixelPaddingValue"))
    if padding is not None:
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
    """The file's own first ``(WindowCenter, WindowWidth)``, or ``None`` when absent or unusable.

    Multi-valued attributes give their first value; a width that is not positive gives ``None``.
    """
    path, rel = checked_path(ref.path, root)
    ds = read_dataset(path, rel, stop_before_pixels=True)
    center = first_float(ds.get("WindowCenter"))
    width = first_float(ds.get("WindowWidth"))
    if center is None or width is None or not width > 0:
        logger.debug("no usable WindowCenter/WindowWidth in %s", rel)
        return None
    return center, width
