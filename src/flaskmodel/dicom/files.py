"""Low-level DICOM file helpers shared by series scanning and pixel reading.

Owns reading a dataset with errors that name the file relative to the data root
(``read_dataset``), keeping slice paths inside the data root (``checked_path``,
``relative_name``), shortening exception text for error messages (``short_reason``) and tolerant
conversion of DICOM values (``floats``, ``first_float``, ``int_or_none``). ``pydicom.dcmread`` is
called through the ``pydicom`` module so tests can observe which files are opened.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from flaskmodel.errors import DicomReadError, InvalidSeriesId

logger = logging.getLogger(__name__)

# pydicom messages can be long (whole reprs); errors keep the first part only.
_MAX_REASON = 200


def read_dataset(path: Path, rel: str, *, stop_before_pixels: bool) -> Any:
    """``pydicom.dcmread`` that names the file (relative to the root) in a ``DicomReadError``."""
    try:
        # Called through the module so tests can observe which files are opened.
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types on corrupt or non-DICOM input
        raise DicomReadError(f"cannot read DICOM file '{rel}': {short_reason(exc)}") from exc


def checked_path(path: Path, root: Path) -> tuple[Path, str]:
    """The resolved slice path and its name relative to the root; refuses paths outside it."""
    resolved_root = root.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(resolved_root):
        raise InvalidSeriesId(f"slice file '{path.name}' is outside the data root")
    return resolved, resolved.relative_to(resolved_root).as_posix()


def relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def short_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)


def floats(value: Any, count: int) -> list[float] | None:
    """Exactly ``count`` finite floats from a (multi-)value, else ``None``."""
    try:
        numbers = [float(v) for v in _values(value)]
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    return numbers


def first_float(value: Any) -> float | None:
    try:
        numbers = [float(v) for v in _values(value)]
    except (TypeError, ValueError):
        return None
    return numbers[0] if numbers and np.isfinite(numbers[0]) else None


def int_or_none(value: Any) -> int | None:
    items = _values(value)
    if not items or isinstance(items[0], bytes):
        return None
    try:
        return int(items[0])
    except (TypeError, ValueError):
        return None
