"""A synthetic CT phantom and a demo series of it written as DICOM CT Image Storage files.

The phantom is a stack of simple shapes in Hounsfield units that changes along z through twelve
body regions, head to feet (``REGION_NAMES``): a skull ring, a neck with trachea, shoulders with
humeral heads, a chest with lungs and ribs, an abdomen with liver, kidneys and bowel gas, a pelvis
with iliac bones, hips with femoral heads, then two thighs and two lower legs. Air is -1000 HU,
fat -100, soft tissue about 40, bone 700, lung -800; a little seeded noise is added.

``write_demo_series`` writes ``<data_root>/<series_uid>/slice-XXX.dcm`` (explicit VR little endian,
unsigned 16-bit, RescaleSlope 1, RescaleIntercept -1024), slice 1 at the head with
ImagePositionPatient z decreasing by 5 mm per slice. The files are written into a hidden temporary
folder that is renamed into place, so an interrupted run never leaves a half series. Nothing here
imports pydicom at module import.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

#: The demo series' SeriesInstanceUID, fixed so callers can name the series without reading it:
#: ``demo_uid("series")``, a UUID-derived ``2.25.`` UID (DICOM PS3.5 §B.2).
DEMO_SERIES_UID = "2.25.273910872569365860004427804122041283601"

#: The twelve body regions of the phantom, head (cranial) to feet (caudal).
REGION_NAMES: tuple[str, ...] = (
    "head",
    "neck",
    "shoulders",
    "upper_chest",
    "lower_chest",
    "upper_abdomen",
    "mid_abdomen",
    "lower_abdomen",
    "pelvis",
    "hips",
    "thighs",
    "legs",
)

AIR_HU = -1000.0
FAT_HU = -100.0
TISSUE_HU = 40.0
LIVER_HU = 60.0
LUNG_HU = -800.0
BONE_HU = 700.0

#: Soft-tissue window (level, width) written as WindowCenter/WindowWidth and used by the demo model.
SOFT_TISSUE_WINDOW = (40.0, 400.0)
SLICE_SPACING_MM = 5.0
FIELD_OF_VIEW_MM = 500.0
RESCALE_INTERCEPT = -1024.0
NOISE_HU = 8.0

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_STUDY_DATE = datetime.date(2024, 1, 1)

FloatImage = npt.NDArray[np.float32]
_Grid = npt.NDArray[np.float64]
_Painter = Callable[[_Grid, _Grid, float, FloatImage], None]


def region_of(t: float) -> int:
    """The region index (0..11) at relative position ``t`` in [0, 1], head (0) to feet (1)."""
    return min(max(int(t * len(REGION_NAMES)), 0), len(REGION_NAMES) - 1)


def slice_position(index: int, n_slices: int) -> float:
    """Relative position (0 head .. 1 feet) of the centre of slice ``index`` of ``n_slices``."""
    return (index + 0.5) / n_slices


def _paint(
    img: FloatImage, x: _Grid, y: _Grid, shape: tuple[float, float, float, float], hu: float
) -> None:
    """Set the ellipse ``(cx, cy, a, b)`` (normalised image coordinates) of ``img`` to ``hu``."""
    cx, cy, a, b = shape
    img[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0] = hu


def _limb(img: FloatImage, x: _Grid, y: _Grid, cx: float, radius: float) -> None:
    """A round limb with a fat rim, centred at (cx, 0)."""
    _paint(img, x, y, (cx, 0.0, radius, radius), FAT_HU)
    _paint(img, x, y, (cx, 0.0, radius - 0.035, radius - 0.035), TISSUE_HU)


def _trunk(img: FloatImage, x: _Grid, y: _Grid, a: float, b: float) -> None:
    """The body outline: an ellipse of fat with soft tissue inside, and a vertebral body."""
    _paint(img, x, y, (0.0, 0.0, a, b), FAT_HU)
    _paint(img, x, y, (0.0, 0.0, a - 0.04, b - 0.04), TISSUE_HU)
    _paint(img, x, y, (0.0, b * 0.58, 0.075, 0.07), BONE_HU)


def _ribs(img: FloatImage, x: _Grid, y: _Grid, size: tuple[float, float], count: int) -> None:
    """``count`` rib cross-sections on each side, just inside a trunk of half-axes ``size``."""
    a, b = size
    for k in range(count):
        angle = np.pi * (0.15 + 0.7 * k / max(count - 1, 1))
        for side in (-1.0, 1.0):
            cx = side * (a - 0.08) * float(np.sin(angle))
            cy = -(b - 0.08) * float(np.cos(angle))
            _paint(img, x, y, (cx, cy, 0.03, 0.03), BONE_HU)


def _head(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    r = 0.30 + 0.08 * u
    _paint(img, x, y, (0.0, 0.0, r * 0.9, r), BONE_HU)
    _paint(img, x, y, (0.0, 0.0, r * 0.9 - 0.045, r - 0.045), 35.0)


def _neck(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _paint(img, x, y, (0.0, 0.0, 0.27, 0.25), FAT_HU)
    _paint(img, x, y, (0.0, 0.0, 0.235, 0.215), TISSUE_HU)
    _paint(img, x, y, (0.0, 0.09, 0.07, 0.065), BONE_HU)
    _paint(img, x, y, (0.0, -0.12, 0.045, 0.04), AIR_HU)


def _shoulders(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _trunk(img, x, y, 0.88, 0.36)
    for side in (-1.0, 1.0):
        _paint(img, x, y, (side * 0.72, 0.0, 0.09, 0.09), BONE_HU)
        _paint(img, x, y, (side * 0.24, 0.0, 0.08 + 0.06 * u, 0.1), LUNG_HU)


def _upper_chest(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _trunk(img, x, y, 0.72, 0.46)
    for side in (-1.0, 1.0):
        _paint(img, x, y, (side * 0.33, -0.02, 0.25, 0.31), LUNG_HU)
    _paint(img, x, y, (0.0, -0.38, 0.05, 0.035), BONE_HU)
    _ribs(img, x, y, (0.72, 0.46), 5)


def _lower_chest(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _trunk(img, x, y, 0.72, 0.47)
    for side in (-1.0, 1.0):
        _paint(img, x, y, (side * 0.37, 0.05, 0.2 - 0.04 * u, 0.27), LUNG_HU)
    _paint(img, x, y, (-0.06, -0.1, 0.22, 0.2), 45.0)
    _ribs(img, x, y, (0.72, 0.47), 4)


def _upper_abdomen(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _trunk(img, x, y, 0.7, 0.48)
    _paint(img, x, y, (-0.28, -0.04, 0.34, 0.3), LIVER_HU)
    _paint(img, x, y, (0.3, -0.2, 0.12, 0.08), AIR_HU)
    for side in (-1.0, 1.0):
        _paint(img, x, y, (side * 0.42, 0.26, 0.1 * (1.0 - u) + 0.01, 0.07), LUNG_HU)
    _ribs(img, x, y, (0.7, 0.48), 3)


def _mid_abdomen(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _trunk(img, x, y, 0.72, 0.5)
    for side in (-1.0, 1.0):
        _paint(img, x, y, (side * 0.3, 0.2, 0.1, 0.13), 30.0)
    for cx, cy in ((-0.15, -0.2), (0.2, -0.25), (0.05, -0.05)):
        _paint(img, x, y, (cx, cy, 0.05, 0.04), -900.0)


def _lower_abdomen(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _trunk(img, x, y, 0.74, 0.5)
    for side in (-1.0, 1.0):
        _paint(img, x, y, (side * 0.52, 0.15, 0.1 + 0.05 * u, 0.04), BONE_HU)
    for cx, cy in ((-0.2, -0.15), (0.15, -0.3)):
        _paint(img, x, y, (cx, cy, 0.06, 0.045), -900.0)


def _pelvis(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _paint(img, x, y, (0.0, 0.0, 0.76, 0.5), FAT_HU)
    _paint(img, x, y, (0.0, 0.0, 0.72, 0.46), TISSUE_HU)
    for side in (-1.0, 1.0):
        _paint(img, x, y, (side * 0.45, 0.1, 0.2, 0.09), BONE_HU)
    _paint(img, x, y, (0.0, 0.3, 0.15, 0.07), BONE_HU)
    _paint(img, x, y, (0.0, -0.2, 0.15, 0.12), 10.0)


def _hips(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    _paint(img, x, y, (0.0, 0.0, 0.8, 0.45), FAT_HU)
    _paint(img, x, y, (0.0, 0.0, 0.76, 0.41), TISSUE_HU)
    for side in (-1.0, 1.0):
        _paint(img, x, y, (side * 0.42, 0.0, 0.1, 0.1), BONE_HU)
    _paint(img, x, y, (0.0, -0.3, 0.1, 0.04), BONE_HU)


def _thighs(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    for side in (-1.0, 1.0):
        _limb(img, x, y, side * 0.3, 0.27 - 0.03 * u)
        _paint(img, x, y, (side * 0.3, 0.02, 0.06, 0.06), BONE_HU)


def _legs(x: _Grid, y: _Grid, u: float, img: FloatImage) -> None:
    for side in (-1.0, 1.0):
        _limb(img, x, y, side * 0.24, 0.17 - 0.02 * u)
        _paint(img, x, y, (side * 0.24, -0.04, 0.045, 0.045), BONE_HU)
        _paint(img, x, y, (side * 0.31, 0.05, 0.025, 0.025), BONE_HU)


_PAINTERS: tuple[_Painter, ...] = (
    _head,
    _neck,
    _shoulders,
    _upper_chest,
    _lower_chest,
    _upper_abdomen,
    _mid_abdomen,
    _lower_abdomen,
    _pelvis,
    _hips,
    _thighs,
    _legs,
)


def render_phantom(t: float, size: int, noise_seed: int | None = None) -> FloatImage:
    """One axial phantom slice in HU at relative position ``t`` (0 head .. 1 feet), ``size``².

    Image rows run anterior to posterior and columns right to left of the patient (the DICOM
    axial convention), over a ``FIELD_OF_VIEW_MM`` field. With ``noise_seed`` a seeded Gaussian
    noise of ``NOISE_HU`` is added.
    """
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(centres, centres, indexing="ij")
    img = np.full((size, size), AIR_HU, dtype=np.float32)
    region = region_of(t)
    u = t * len(REGION_NAMES) - region
    _PAINTERS[region](x, y, float(min(max(u, 0.0), 1.0)), img)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        img += rng.normal(0.0, NOISE_HU, img.shape).astype(np.float32)
    return img


def window_unit(hu: FloatImage, window: tuple[float, float] = SOFT_TISSUE_WINDOW) -> FloatImage:
    """``clip((HU - (L - W/2)) / W, 0, 1)`` as float32: the demo model's input scaling."""
    level, width = window
    out: FloatImage = np.clip((hu - (level - width / 2.0)) / width, 0.0, 1.0).astype(np.float32)
    return out


def demo_uid(*parts: str) -> str:
    """A deterministic ``2.25.<uuid5 as integer>`` UID named by ``parts``.

    ``pydicom.uid.generate_uid(prefix=None, ...)`` ignores its entropy sources (it returns a random
    UUID), so the UIDs are derived here with a name-based UUID instead.
    """
    name = "flaskmodel/demo/" + "/".join(parts)
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds  # noqa: PLC0415 - pydicom only when writing

    return str(format_number_as_ds(float(value)))


def _slice_dataset(
    index: int, n_slices: int, size: int, series_uid: str, pixels: npt.NDArray[np.uint16]
) -> Any:
    """One slice as a pydicom ``Dataset`` with file meta: patient/study/series, then image."""
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415 - pydicom when writing
    from pydicom.uid import (  # noqa: PLC0415 - pydicom only when writing
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        ExplicitVRLittleEndian,
    )

    sop_uid = UID(demo_uid(series_uid, "sop", str(index)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(_CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    date = _STUDY_DATE.strftime("%Y%m%d")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = demo_uid(series_uid, "study")
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = demo_uid(series_uid, "frame-of-reference")
    ds.Modality = "CT"
    ds.PatientName = "Demo^Phantom"
    ds.PatientID = "DEMO"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "FlaskModel"
    ds.StudyDescription = "FlaskModel demo"
    ds.SeriesDescription = "FlaskModel demo phantom"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    _set_image(ds, index, n_slices, size, pixels)
    return ds


def _set_image(
    ds: Any, index: int, n_slices: int, size: int, pixels: npt.NDArray[np.uint16]
) -> None:
    """Geometry (head first, z decreasing), pixel format, rescale and window of one slice."""
    spacing = FIELD_OF_VIEW_MM / size
    corner = -FIELD_OF_VIEW_MM / 2.0 + spacing / 2.0
    z = SLICE_SPACING_MM * (n_slices - 1 - index)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [_ds(corner), _ds(corner), _ds(z)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _ds(z)
    ds.SliceThickness = _ds(SLICE_SPACING_MM)
    ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.KVP = "120"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = _ds(SOFT_TISSUE_WINDOW[0])
    ds.WindowWidth = _ds(SOFT_TISSUE_WINDOW[1])
    ds.PixelData = pixels.tobytes()


def series_complete(folder: Path, n_slices: int) -> bool:
    """Whether ``folder`` holds exactly ``n_slices`` ``slice-*.dcm`` files."""
    return folder.is_dir() and len(list(folder.glob("slice-*.dcm"))) == n_slices


def write_demo_series(
    data_root: Path, n_slices: int = 40, size: int = 128, series_uid: str = DEMO_SERIES_UID
) -> Path:
    """Write the phantom as ``n_slices`` DICOM CT slices of ``size``² pixels; returns the folder.

    The folder is ``<data_root>/<series_uid>/``; an existing one is replaced. Deterministic: the
    same arguments give the same pixels and UIDs.
    """
    from pydicom import dcmwrite  # noqa: PLC0415 - pydicom only when writing

    if n_slices < 1 or size < 8:
        raise ValueError(f"need n_slices >= 1 and size >= 8, got {n_slices} and {size}")
    data_root.mkdir(parents=True, exist_ok=True)
    target = data_root / series_uid
    tmp = data_root / f".tmp-{series_uid}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for index in range(n_slices):
            hu = render_phantom(slice_position(index, n_slices), size, noise_seed=index)
            stored = np.clip(np.rint(hu - RESCALE_INTERCEPT), 0, 4095).astype(np.uint16)
            ds = _slice_dataset(index, n_slices, size, series_uid, stored)
            dcmwrite(tmp / f"slice-{index + 1:03d}.dcm", ds, enforce_file_format=True)
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote demo series %s: %d slices of %dx%d", target, n_slices, size, size)
    return target


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, replacing (then deleting) any existing ``target``."""
    old = target.with_name(f".old-{target.name}-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
