"""Walk a series folder and read the header of each file in it (no pixel data).

Owns ``walk_files`` (candidate files in a stable order, never one outside the data root: hidden
entries and symlinked folders are skipped) and ``read_headers``, which parses one file's header
into ``Header``s: image, localizer or non-image object, with the UIDs and geometry that
``flaskmodel.dicom.series`` groups and sorts by; a multi-frame image (Enhanced or Legacy Converted
Enhanced CT) gives one ``Header`` per frame, its geometry from the functional groups. A file that
is not DICOM at all (a catalogue such as DICOMDIR/DIRFILE/VERSION, a viewer program, text: no
``DICM`` preamble and no parseable data set) gives ``None``, for the caller to count. A DICOM
file that does not read, or an image with a broken header, raises ``DicomReadError`` naming it
relative to the data root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flaskmodel.dicom.files import (
    first_float,
    floats,
    frame_groups,
    group_item,
    has_dicm_prefix,
    int_or_none,
    read_dataset,
    read_raw_dataset,
    relative_name,
    short_reason,
)
from flaskmodel.errors import DicomReadError, SeriesError

#: Catalogue files of CD/USB exports, skipped by name without being opened: the DICOM directory,
#: Philips' per-folder ``DIRFILE`` (which pydicom may half-read) and the export's ``VERSION``.
CATALOGUE_NAMES = frozenset({"DICOMDIR", "DIRFILE", "VERSION"})

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Image storage SOP classes: a file of one of these without Rows/Columns has a broken header
# (pydicom reads a truncated file without complaint), so it is an error, not a non-image object.
_IMAGE_SOP_CLASSES = frozenset(
    "1.2.840.10008.5.1.4.1.1." + suffix
    for suffix in (
        "1", "1.1", "1.1.1", "1.2", "1.2.1", "1.3", "1.3.1",  # CR, DX, MG, IO
        "2", "2.1", "2.2",  # CT, Enhanced CT, Legacy Converted Enhanced CT
        "4", "4.1", "4.4",  # MR, Enhanced MR, Legacy Converted Enhanced MR
        "6.1", "7", "7.1", "7.2", "7.3", "7.4", "12.1", "20",  # US, SC, XA, NM
        "128", "128.1", "130",  # PET, Legacy Converted Enhanced PET, Enhanced PET
    )
)  # fmt: skip


@dataclass(frozen=True)
class SliceRef:
    """One image slice of a series: where it is and where it sits in the stack.

    ``z`` is the position projected on the slice normal (mm) when the series sorts by geometry,
    else the slice's rank in InstanceNumber order. ``frame_number`` (1-based) picks the frame of a
    multi-frame file; it is ``None`` for a single-frame file.
    """

    path: Path
    sop_instance_uid: str
    instance_number: int | None
    position: tuple[float, float, float] | None
    z: float
    series_instance_uid: str
    frame_number: int | None = None

    @property
    def key(self) -> str:
        """Unique per slice: the SOPInstanceUID, plus ``:<frame number>`` for a frame."""
        if self.frame_number is None:
            return self.sop_instance_uid
        return f"{self.sop_instance_uid}:{self.frame_number}"


@dataclass(frozen=True)
class Header:
    """What the scan needs from one file's header (or one frame's, for a multi-frame image)."""

    path: Path
    kind: Literal["image", "localizer", "non_image"]
    series_uid: str
    sop_uid: str
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None  # the six direction cosines
    thickness: float | None
    shape: tuple[int, int] | None
    frame_number: int | None = None
    gantry_tilt: float | None = None  # GantryDetectorTilt, degrees


def walk_files(folder: Path, root: Path, notes: list[str]) -> Iterator[Path]:
    """Candidate files under ``folder`` in a stable order, never one outside ``root``.

    Skips hidden entries and symlinked folders (not followed: they could loop or leave the
    root); a symlinked file is used only when its target lies inside the root.
    """

    def fail(error: OSError) -> None:
        where = relative_name(Path(error.filename), root) if error.filename else "?"
        raise SeriesError(f"cannot list '{where}': {error.strerror}") from error

    seen: set[Path] = set()  # a file and a symlink to it are read once
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                notes.append(f"skipped symlinked folder '{relative_name(here / name, root)}'")
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink()
        )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            if path.is_symlink():
                target = path.resolve(strict=False)
                if not target.is_relative_to(root) or not target.is_file():
                    where = relative_name(path, root)
                    notes.append(f"skipped symlink '{where}' (target missing or outside the root)")
                    continue
                path = target
            if path not in seen:
                seen.add(path)
                yield path


def read_headers(path: Path, rel: str) -> list[Header] | None:
    """The header(s) of one file (no pixel data): one, or one per frame of a multi-frame image;
    ``None`` when the file is not DICOM. ``DicomReadError`` names a DICOM file that fails."""
    if path.name.upper() in CATALOGUE_NAMES:
        return None
    if has_dicm_prefix(path, rel):
        ds = read_dataset(path, rel, stop_before_pixels=True)
    else:
        ds = read_raw_dataset(path)
        if ds is None:
            return None
    try:
        return _headers_of(ds, path, rel)
    except DicomReadError:
        raise
    except Exception as exc:  # pydicom converts values lazily, so bad values fail here
        raise DicomReadError(f"cannot read DICOM header of '{rel}': {short_reason(exc)}") from exc


def _headers_of(ds: Any, path: Path, rel: str) -> list[Header]:
    """Classify a header (image / localizer / non-image) and pull out the geometry."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    image_type = ds.get("ImageType")
    types = [image_type] if isinstance(image_type, str) else list(image_type or [])
    kind: Literal["image", "localizer", "non_image"] = "image"
    if ds.get("Rows") is None or ds.get("Columns") is None:
        if not sop_class or sop_class in _IMAGE_SOP_CLASSES:
            raise DicomReadError(f"'{rel}' has an incomplete header (truncated file?)")
        kind = "non_image"
    elif sop_class == _DICOMDIR_SOP_CLASS:
        kind = "non_image"
    elif any(str(t).strip().upper() == "LOCALIZER" for t in types):
        kind = "localizer"

    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    if kind == "image" and not (series_uid and sop_uid):
        raise DicomReadError(f"'{rel}' has no SeriesInstanceUID or SOPInstanceUID")
    common: dict[str, Any] = {
        "path": path,
        "kind": kind,
        "series_uid": series_uid,
        "sop_uid": sop_uid,
        "instance_number": int_or_none(ds.get("InstanceNumber")),
        "shape": (int(ds.Rows), int(ds.Columns)) if kind != "non_image" else None,
    }
    groups = frame_groups(ds, rel) if kind == "image" else None
    if groups is not None:
        return [
            Header(**common, frame_number=number, **_geometry(ds, item))
            for number, item in enumerate(groups, start=1)
        ]
    frames = int_or_none(ds.get("NumberOfFrames")) or 1
    if kind == "image" and frames > 1:
        # Frames without functional groups have no position of their own: the sort falls back
        # to InstanceNumber and frame order, and says so.
        tilt = first_float(ds.get("GantryDetectorTilt"))
        thickness = first_float(ds.get("SliceThickness"))
        return [
            Header(
                **common,
                frame_number=number,
                position=None,
                orientation=None,
                thickness=thickness,
                gantry_tilt=tilt,
            )
            for number in range(1, frames + 1)
        ]
    return [Header(**common, **_geometry(ds, None))]


def _geometry(ds: Any, groups: tuple[Any, Any] | None) -> dict[str, Any]:
    """Position, orientation, thickness and gantry tilt: from one frame's functional groups (its
    own, else the shared ones) when given, else from the top level of the data set."""

    def value(sequence: str, keyword: str) -> Any:
        if groups is None:
            return ds.get(keyword)
        item = group_item(groups, sequence)
        return item.get(keyword) if item is not None else None

    position = floats(value("PlanePositionSequence", "ImagePositionPatient"), 3)
    orientation = floats(value("PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    tilt = value("CTAcquisitionDetailsSequence", "GantryDetectorTilt")
    return {
        "position": (position[0], position[1], position[2]) if position else None,
        "orientation": tuple(orientation) if orientation else None,
        "thickness": first_float(value("PixelMeasuresSequence", "SliceThickness")),
        # Enhanced CT keeps the tilt in a functional group; some converters leave it on top.
        "gantry_tilt": first_float(tilt if tilt is not None else ds.get("GantryDetectorTilt")),
    }
