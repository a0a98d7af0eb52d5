"""Low-level DICOM file helpers shared by series scanning and pixel reading.

Owns reading a dataset with errors that name the file relative to the data root
(``read_dataset``), telling DICOM files from the other files of a CD/USB export
(``has_dicm_prefix``, ``read_raw_dataset``), the functional groups of multi-frame images
(``frame_groups``, ``group_item``), keeping slice paths inside the data root (``checked_path``,
``relative_name``), shortening exception text for error messages (``short_reason``) and tolerant
conversion of DICOM values (``floats``, ``first_float``, ``int_or_none``). ``pydicom.dcmread`` is
called through the ``pydicom`` module so tests can observe which files are opened.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from flaskmodel.errors import DicomReadError, InvalidSeriesId

# pydicom messages can be long (whole reprs); errors keep the first part only.
_MAX_REASON = 200
# A data set stored without the Part 10 preamble starts with an element of group 0002 (file meta)
# or 0008 (identifying attributes), little endian; anything else is not worth parsing.
_RAW_STARTS = (b"\x02\x00", b"\x08\x00")
_UID = re.compile(r"\A[0-9]+(\.[0-9]+)*\Z")


def read_dataset(path: Path, rel: str, *, stop_before_pixels: bool) -> Any:
    """``pydicom.dcmread`` that names the file (relative to the root) in a ``DicomReadError``.

    Reads data sets stored without the Part 10 preamble too (``force``: it only skips the
    preamble check); the scan decides which files are DICOM (``has_dicm_prefix``,
    ``read_raw_dataset``) before any is read here.
    """
    try:
        # Called through the module so tests can observe which files are opened.
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception as exc:  # pydicom raises many types on corrupt or non-DICOM input
        raise DicomReadError(f"cannot read DICOM file '{rel}': {short_reason(exc)}") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        # A data set without file meta is stored natively; the decoders need its syntax named.
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
    return ds


def has_dicm_prefix(path: Path, rel: str) -> bool:
    """Whether the file has the Part 10 preamble: ``DICM`` after 128 bytes."""
    try:
        with path.open("rb") as file:
            head = file.read(132)
    except OSError as exc:
        raise DicomReadError(f"cannot read file '{rel}': {exc.strerror}") from exc
    return head[128:132] == b"DICM"


def read_raw_dataset(path: Path) -> Any | None:
    """The header of a file without the ``DICM`` preamble when it parses as a data set that names
    its instance (SOPInstanceUID and SOPClassUID or SeriesInstanceUID as valid UIDs), else
    ``None``: such a file is not DICOM (a viewer program, a catalogue, text)."""
    try:
        with path.open("rb") as file:
            if file.read(2) not in _RAW_STARTS:
                return None
        # Parsing arbitrary bytes makes pydicom warn about every odd value; a file that does not
        # parse is simply not DICOM, so neither its warnings nor its exception are news.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            sop = str(ds.get("SOPInstanceUID", "") or "")
            owner = str(ds.get("SOPClassUID", "") or ds.get("SeriesInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - any parse failure means "not a DICOM data set"
        return None
    return ds if _UID.match(sop) and _UID.match(owner) else None


def frame_groups(ds: Any, rel: str) -> list[tuple[Any, Any]] | None:
    """Per frame of a multi-frame image: its PerFrameFunctionalGroupsSequence item and the
    SharedFunctionalGroupsSequence item (either may be ``None``); ``None`` when the file has no
    functional groups. Raises ``DicomReadError`` when the per-frame items do not match
    NumberOfFrames."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not shared_seq and not per_frame:
        return None
    shared = shared_seq[0] if shared_seq else None
    frames = int_or_none(ds.get("NumberOfFrames")) or 1
    if per_frame is None:
        return [(None, shared)] * frames
    if len(per_frame) != frames:
        raise DicomReadError(
            f"'{rel}' has NumberOfFrames {frames} but {len(per_frame)} "
            "PerFrameFunctionalGroupsSequence items"
        )
    return [(item, shared) for item in per_frame]


def group_item(groups: tuple[Any, Any], sequence: str) -> Any | None:
    """The first item of functional group ``sequence`` for one frame: its own, else the shared."""
    for source in groups:
        value = source.get(sequence) if source is not None else None
        if value:
            return value[0]
    return None


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
