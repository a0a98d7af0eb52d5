"""Find, check and sort the slices of one DICOM series under the data root.

A series id names a folder directly under the data root (usually its SeriesInstanceUID, but any
allow-listed name works). ``scan_series`` walks that folder recursively, reads headers only, keeps
the image slices of one SeriesInstanceUID and sorts them geometrically; each frame of a multi-frame
image (Enhanced / Legacy Converted Enhanced CT) is a slice like any other. This module owns
``scan_series`` (grouping and sorting), ``Series`` and ``resolve_series_dir``; the folder walk,
header parsing and ``SliceRef`` live in ``flaskmodel.dicom.headers``, reading a slice as HU in
``flaskmodel.dicom.pixels`` and the shared file helpers in ``flaskmodel.dicom.files``.

Sort order: ``z = ImagePositionPatient · n`` with ``n = row cosines × column cosines`` (from
ImageOrientationPatient, normalised), and slices are sorted by **ascending z**. In the patient's
LPS frame a standard axial series (orientation ``1,0,0,0,1,0``) has ``n = +Z`` (towards the head),
so index 0 is the most inferior (feet-most) slice and the last index the most superior. When any
slice lacks geometry, or orientations differ between slices, the sort falls back to InstanceNumber
(then ``z`` is the slice's rank in that order) and says so in ``Series.warnings``.

Anything odd but usable (duplicate positions, gaps, mixed orientation, varying slice thickness,
gantry tilt or a stack stepping off its normal, non-axial slices, dropped localizers, other series
in the folder, files that are not DICOM such as the catalogues and viewer programs of CD exports)
is reported in ``Series.warnings``; anything unusable (a DICOM file that does not read, an
ambiguous folder) raises from ``flaskmodel.errors`` with the file named relative to the data root.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from flaskmodel.dicom.files import relative_name
from flaskmodel.dicom.headers import Header, SliceRef, read_headers, walk_files
from flaskmodel.errors import InvalidSeriesId, SeriesError, SeriesNotFound

__all__ = [
    "AXIAL_TOLERANCE_DEG",
    "DUPLICATE_TOLERANCE_MM",
    "GAP_FACTOR",
    "ORIENTATION_TOLERANCE",
    "SERIES_ID_PATTERN",
    "TILT_TOLERANCE_DEG",
    "Series",
    "SortMethod",
    "resolve_series_dir",
    "scan_series",
]

logger = logging.getLogger(__name__)

#: Allow-list for series ids: 1–128 of ``[A-Za-z0-9._-]``, not starting with ``.`` (so neither
#: ``.`` nor ``..`` nor hidden names). Anchored with ``\A``/``\Z`` so ``match`` is as safe as
#: ``fullmatch``.
SERIES_ID_PATTERN = re.compile(r"\A(?!\.)[A-Za-z0-9._-]{1,128}\Z")

#: Orientation cosines differing by more than this between slices count as mixed orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Positions closer than this along the normal (mm) count as duplicates.
DUPLICATE_TOLERANCE_MM = 0.01
#: A spacing larger than this multiple of the median spacing is reported as a gap.
GAP_FACTOR = 1.5
#: A gantry tilt, or a stack stepping off its slice normal, beyond this (degrees) is reported.
TILT_TOLERANCE_DEG = 0.5
#: A slice normal further than this (degrees) from the feet-head axis is reported as non-axial.
AXIAL_TOLERANCE_DEG = 10.0

# How many individual gaps/duplicates a warning spells out before it only counts them.
_MAX_LISTED = 5

SortMethod = Literal["geometry", "instance_number"]


@dataclass(frozen=True)
class Series:
    """A scanned series: its slices in sort order plus what was odd about them."""

    uid: str
    folder: Path
    slices: tuple[SliceRef, ...]
    sort_method: SortMethod
    normal: tuple[float, float, float] | None
    spacing: float | None
    warnings: tuple[str, ...]

    def select(self, start: int | None = None, stop: int | None = None) -> tuple[SliceRef, ...]:
        """The slices ``[start, stop)`` of the sorted series (``None`` means from 0 / to the end).

        Raises ``SeriesError`` for a negative bound, a start or stop past the end, or an empty
        range; the message says how many slices the series has.
        """
        n = len(self.slices)
        lo = 0 if start is None else start
        hi = n if stop is None else stop
        has = f"series '{self.uid}' has {n} slices (indices 0..{n - 1})"
        if lo < 0 or hi < 0:
            raise SeriesError(f"slice range [{start}, {stop}) must not be negative; {has}")
        if lo >= n:
            raise SeriesError(f"slice range start {lo} is past the end; {has}")
        if hi > n:
            raise SeriesError(f"slice range stop {hi} is past the end; {has}")
        if lo >= hi:
            raise SeriesError(f"slice range [{lo}, {hi}) is empty; {has}")
        return self.slices[lo:hi]


def resolve_series_dir(data_root: Path, series_uid: str) -> Path:
    """The resolved folder of ``series_uid`` under ``data_root``.

    Raises ``InvalidSeriesId`` when the id is outside the allow-list or resolves (through symlinks)
    outside the resolved data root, and ``SeriesNotFound`` when there is no such folder. Opens no
    file: it only resolves and stats paths.
    """
    if not SERIES_ID_PATTERN.match(series_uid):
        raise InvalidSeriesId(
            f"invalid series id {series_uid[:140]!r}: use 1-128 characters of [A-Za-z0-9._-], "
            "not starting with '.'"
        )
    root = data_root.resolve()
    folder = (root / series_uid).resolve(strict=False)
    if folder == root or not folder.is_relative_to(root):
        raise InvalidSeriesId(f"series id '{series_uid}' resolves outside the data root")
    if not folder.is_dir():
        raise SeriesNotFound(f"series '{series_uid}' not found under the data root")
    return folder


def scan_series(data_root: Path, series_uid: str) -> Series:
    """Scan the folder of ``series_uid`` and return its image slices, sorted (see module doc).

    Uses the group whose SeriesInstanceUID equals ``series_uid``; otherwise, when the folder holds
    exactly one series, that one; otherwise raises ``SeriesError`` listing the UIDs found.
    """
    root = data_root.resolve()
    folder = resolve_series_dir(data_root, series_uid)
    notes: list[str] = []
    headers: list[Header] = []
    not_dicom: list[str] = []  # catalogues, viewer programs, text: named in the warning
    for path in walk_files(folder, root, notes):
        rel = relative_name(path, root)
        read = read_headers(path, rel)
        if read is None:
            not_dicom.append(rel)
        else:
            headers.extend(read)
    if not_dicom:
        examples = ", ".join(not_dicom[:3])
        notes.append(f"skipped {len(not_dicom)} non-DICOM file(s), e.g. {examples}")

    groups: dict[str, list[Header]] = {}
    localizers: Counter[str] = Counter()
    non_image = 0
    for header in headers:
        if header.kind == "image":
            groups.setdefault(header.series_uid, []).append(header)
        elif header.kind == "localizer":
            localizers[header.series_uid] += 1
        else:
            non_image += 1

    if not groups:
        skipped = f" (skipped {len(not_dicom)} non-DICOM file(s))" if not_dicom else ""
        raise SeriesNotFound(
            f"series '{series_uid}' has no image slices under the data root{skipped}"
        )
    if series_uid in groups:
        uid = series_uid
    elif len(groups) == 1:
        uid = next(iter(groups))
    else:
        found = ", ".join(sorted(groups))
        raise SeriesError(
            f"folder '{series_uid}' holds {len(groups)} series and none has that "
            f"SeriesInstanceUID; found: {found}"
        )

    if localizers[uid]:
        notes.append(f"dropped {localizers[uid]} localizer image(s)")
    if non_image:
        notes.append(f"skipped {non_image} non-image DICOM object(s)")
    others = sorted(set(groups) - {uid})
    if others:
        notes.append(f"ignored {len(others)} other series in the folder: {', '.join(others)}")
    # The same instance stored twice (copied exports) would count one slice twice.
    unique = list({(h.sop_uid, h.frame_number): h for h in reversed(groups[uid])}.values())[::-1]
    if len(unique) < len(groups[uid]):
        copies = len(groups[uid]) - len(unique)
        notes.append(f"dropped {copies} repeated copy(ies) of the same SOPInstanceUID")

    slices, method, normal, spacing, sort_notes = _sort(unique)
    notes.extend(sort_notes)
    notes.extend(_tilt_notes(unique, slices, normal))
    notes.extend(_consistency_notes(unique))
    logger.info(
        "scanned series %s: %d slices, sorted by %s, %d warning(s)",
        uid,
        len(slices),
        method,
        len(notes),
    )
    return Series(
        uid=uid,
        folder=folder,
        slices=slices,
        sort_method=method,
        normal=normal,
        spacing=spacing,
        warnings=tuple(notes),
    )


# --- sorting ----------------------------------------------------------------------------------


def _sort(
    headers: list[Header],
) -> tuple[
    tuple[SliceRef, ...], SortMethod, tuple[float, float, float] | None, float | None, list[str]
]:
    """Sort by projected position when geometry allows, else by InstanceNumber (see module doc)."""
    notes: list[str] = []
    normal = _common_normal(headers, notes)
    if normal is None:
        return (*_sort_by_instance_number(headers, notes), notes)

    positions = np.array([h.position for h in headers], dtype=np.float64)
    z = positions @ normal
    order = sorted(range(len(headers)), key=lambda i: (z[i], _instance_key(headers[i])))
    slices = tuple(_ref(headers[i], float(z[i])) for i in order)
    spacing = _spacing_notes(np.array([s.z for s in slices]), slices, notes)
    n = (float(normal[0]), float(normal[1]), float(normal[2]))
    return slices, "geometry", n, spacing, notes


def _common_normal(headers: list[Header], notes: list[str]) -> np.ndarray | None:
    """The unit slice normal shared by all slices, or ``None`` (with a note) when there is none."""
    missing = sum(1 for h in headers if h.position is None or h.orientation is None)
    if missing:
        notes.append(
            f"{missing} of {len(headers)} slices lack ImagePositionPatient/"
            "ImageOrientationPatient; sorted by InstanceNumber"
        )
        return None
    cosines = np.array([h.orientation for h in headers], dtype=np.float64)
    deviation = float(np.abs(cosines - cosines[0]).max())
    if deviation > ORIENTATION_TOLERANCE:
        notes.append(
            f"mixed orientation: ImageOrientationPatient differs by up to {deviation:.3g} "
            "between slices; sorted by InstanceNumber"
        )
        return None
    normal = np.cross(cosines[0, :3], cosines[0, 3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        notes.append("ImageOrientationPatient cosines are parallel; sorted by InstanceNumber")
        return None
    # "+ 0.0" turns -0.0 components into 0.0 so reported normals read cleanly.
    return normal / length + 0.0


def _sort_by_instance_number(
    headers: list[Header], notes: list[str]
) -> tuple[tuple[SliceRef, ...], SortMethod, None, None]:
    """Fallback order: InstanceNumber, then SOPInstanceUID and frame; ``z`` is the rank."""
    ordered = sorted(headers, key=_instance_key)
    no_number = sum(1 for h in headers if h.instance_number is None)
    if no_number:
        notes.append(f"{no_number} slice(s) have no InstanceNumber; placed last")
    # The frames of one multi-frame file share its InstanceNumber; only files can repeat one.
    files = {(h.instance_number, h.sop_uid) for h in headers if h.instance_number is not None}
    counts = Counter(number for number, _ in files)
    repeated = sorted(k for k, v in counts.items() if v > 1)
    if repeated:
        listed = ", ".join(str(k) for k in repeated[:_MAX_LISTED])
        notes.append(f"duplicate InstanceNumber(s): {listed}; order among them is arbitrary")
    return tuple(_ref(h, float(i)) for i, h in enumerate(ordered)), "instance_number", None, None


def _spacing_notes(z: np.ndarray, slices: tuple[SliceRef, ...], notes: list[str]) -> float | None:
    """Median spacing along the normal; notes duplicate positions and gaps."""
    if z.size < 2:
        return None
    steps = np.diff(z)
    duplicate = steps <= DUPLICATE_TOLERANCE_MM
    if duplicate.any():
        where = [
            f"z={slices[i].z:.2f} ({_label(slices[i])}, {_label(slices[i + 1])})"
            for i in np.flatnonzero(duplicate)[:_MAX_LISTED]
        ]
        notes.append(f"{int(duplicate.sum())} duplicate position(s): {'; '.join(where)}")
    distinct = steps[~duplicate]
    if distinct.size == 0:
        return None
    spacing = float(np.median(distinct))
    gap = ~duplicate & (steps > GAP_FACTOR * spacing)
    if gap.any():
        where = [
            f"{steps[i]:.3f} mm between z={slices[i].z:.2f} and z={slices[i + 1].z:.2f}"
            for i in np.flatnonzero(gap)[:_MAX_LISTED]
        ]
        notes.append(
            f"{int(gap.sum())} gap(s) larger than {GAP_FACTOR}x the median spacing "
            f"{spacing:.3f} mm: {'; '.join(where)}"
        )
    return spacing


def _tilt_notes(
    headers: list[Header], slices: tuple[SliceRef, ...], normal: tuple[float, float, float] | None
) -> list[str]:
    """Gantry tilt (GantryDetectorTilt, and the angle between the slice normal and the direction
    the positions step along), and slice planes that are not axial."""
    parts: list[str] = []
    tilts = sorted({h.gantry_tilt for h in headers if h.gantry_tilt is not None})
    tilted = [t for t in tilts if abs(t) > TILT_TOLERANCE_DEG]
    if tilted:
        values = f"{tilts[0]:.1f}°" if len(tilts) == 1 else f"{tilts[0]:.1f}° to {tilts[-1]:.1f}°"
        parts.append(f"gantry tilt {values} (GantryDetectorTilt)")
    if normal is None:
        return ["; ".join(parts)] if parts else []
    n = np.array(normal)
    step = np.array(slices[-1].position or (0, 0, 0)) - np.array(slices[0].position or (0, 0, 0))
    along = abs(float(step @ n))
    angles = [abs(t) for t in tilted]
    if along > DUPLICATE_TOLERANCE_MM:
        shear = float(np.degrees(np.arccos(min(1.0, along / float(np.linalg.norm(step))))))
        if shear > TILT_TOLERANCE_DEG:
            parts.append(f"slices stack {shear:.1f}° off their normal")
            angles.append(shear)
    notes = ["; ".join(parts)] if parts else []
    axial = float(np.degrees(np.arccos(min(1.0, abs(n[2])))))
    # A tilted gantry tilts the slice planes by the same angle; the tilt note already says so.
    explained = any(abs(axial - angle) < 1.0 for angle in angles)
    if axial > AXIAL_TOLERANCE_DEG and not explained:
        axis = int(np.argmax(np.abs(n)))
        off = float(np.degrees(np.arccos(min(1.0, abs(n[axis])))))
        plane = ("sagittal", "coronal", "axial")[axis] if off <= AXIAL_TOLERANCE_DEG else "oblique"
        notes.append(f"slices are {plane} ({axial:.1f}° from axial)")
    return notes


def _consistency_notes(headers: list[Header]) -> list[str]:
    """Notes on slice thickness and matrix size varying across the series."""
    notes: list[str] = []
    thicknesses = sorted({round(h.thickness, 3) for h in headers if h.thickness is not None})
    if len(thicknesses) > 1:
        notes.append(f"slice thickness varies: {', '.join(f'{t:g}' for t in thicknesses)} mm")
    shapes = sorted({h.shape for h in headers if h.shape is not None})
    if len(shapes) > 1:
        notes.append(f"image sizes vary: {', '.join(f'{r}x{c}' for r, c in shapes)}")
    return notes


def _ref(header: Header, z: float) -> SliceRef:
    return SliceRef(
        path=header.path,
        sop_instance_uid=header.sop_uid,
        instance_number=header.instance_number,
        position=header.position,
        z=z,
        series_instance_uid=header.series_uid,
        frame_number=header.frame_number,
    )


def _instance_key(header: Header) -> tuple[bool, int, str, int]:
    # Slices without an InstanceNumber sort after those with one; frames in frame order.
    number = header.instance_number
    frame = header.frame_number or 0
    return (number is None, 0 if number is None else number, header.sop_uid, frame)


def _label(ref: SliceRef) -> str:
    number = f"#{ref.instance_number}"
    return number if ref.frame_number is None else f"{number} frame {ref.frame_number}"
