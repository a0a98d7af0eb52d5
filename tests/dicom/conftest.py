"""Fixtures for the DICOM tests: the in-repo real samples, a writer of small synthetic slices and
writers of multi-frame CT (Legacy Converted Enhanced with highdicom, Enhanced with pydicom) made
from the samples."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "dicom"


@dataclass(frozen=True)
class Samples:
    """The real CT samples under tests/data/dicom (see the README there)."""

    root: Path
    j2k: str
    b70f: str
    ge: str
    j2k_uid: str
    b70f_uid: str
    ge_uid: str

    def files(self, folder: str) -> list[Path]:
        return sorted((self.root / folder).glob("*.dcm"))


@pytest.fixture(scope="session")
def samples() -> Samples:
    found = Samples(
        root=DATA_DIR,
        j2k="tcia-lung-pet-ct-dx-A0002-chest-B40f-j2k",
        b70f="tcia-lung-pet-ct-dx-A0002-chest-B70f-original",
        ge="dcm_qa_ct-GE-head-tilt-original",
        j2k_uid="1.3.6.1.4.1.14519.5.2.1.6655.2359.207154000096236603057216610983",
        b70f_uid="1.3.6.1.4.1.14519.5.2.1.6655.2359.241981550240354690198744362919",
        ge_uid="1.2.826.0.1.3680043.9.4245.3115138630835728997848661150714813892",
    )
    assert len(found.files(found.j2k)) == 20, "tests/data/dicom is incomplete"
    return found


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """An empty data root inside tmp_path (so tmp_path itself is 'outside the root')."""
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def copy_samples(samples: Samples) -> Callable[[Sequence[Path], Path], Path]:
    """Copy sample files into a folder (created as needed); returns the folder."""

    def copy(files: Sequence[Path], folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy(file, folder / file.name)
        return folder

    return copy


SliceWriter = Callable[..., Path]


@pytest.fixture
def write_slice() -> SliceWriter:
    """Write a small, valid CT slice with pydicom; keyword arguments override the defaults.

    ``z`` sets ImagePositionPatient to ``(0, 0, z)``; ``position=None``/``orientation=None``
    leave those attributes out. ``extra`` sets further attributes by keyword.
    """
    default_series = generate_uid()

    def write(
        path: Path,
        *,
        series_uid: str | None = None,
        z: float | None = 0.0,
        position: Sequence[float] | None = None,
        orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
        instance_number: int | None = 1,
        image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
        thickness: float = 1.0,
        pixels: np.ndarray | None = None,
        slope: float = 1.0,
        intercept: float = -1024.0,
        frames: int = 1,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        array = np.zeros((4, 4), dtype=np.int16) if pixels is None else pixels
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.StudyInstanceUID = "1.2.3.4"
        ds.SeriesInstanceUID = series_uid or default_series
        ds.ImageType = list(image_type)
        if instance_number is not None:
            ds.InstanceNumber = instance_number
        if position is None and z is not None:
            position = (0.0, 0.0, z)
        if position is not None:
            ds.ImagePositionPatient = [float(v) for v in position]
        if orientation is not None:
            ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.SliceThickness = thickness
        ds.PixelSpacing = [0.5, 0.5]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(array.shape[-2]), int(array.shape[-1])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if array.dtype.kind == "i" else 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        if frames > 1:
            ds.NumberOfFrames = frames
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = array.astype(array.dtype.newbyteorder("<")).tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return path

    return write


@pytest.fixture
def opened_files(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every path handed to pydicom.dcmread (the code under test calls it via the module)."""
    opened: list[Path] = []
    real = pydicom.dcmread

    def recording(fp: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(fp).resolve())
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", recording)
    return opened


# --- multi-frame CT made from the samples -------------------------------------------------------


def decoded(files: Sequence[Path]) -> list[Dataset]:
    """The files read and decompressed (the highdicom converter and our writer need raw pixels)."""
    datasets = []
    for file in files:
        ds = pydicom.dcmread(file)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        datasets.append(ds)
    return datasets


def write_legacy_enhanced(
    files: Sequence[Path], path: Path, *, transfer_syntax: str = ExplicitVRLittleEndian
) -> Dataset:
    """One Legacy Converted Enhanced CT file holding ``files`` as frames, in the given order."""
    with warnings.catch_warnings():
        # highdicom warns about the samples' one-component PatientName; not what is tested.
        warnings.simplefilter("ignore", UserWarning)
        image = highdicom.legacy.LegacyConvertedEnhancedCTImage(
            decoded(files),
            series_instance_uid=generate_uid(),
            series_number=90,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            transfer_syntax_uid=transfer_syntax,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path, enforce_file_format=True)
    return image


def _item(**attributes: Any) -> DicomSequence:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return DicomSequence([item])


def write_enhanced_ct(
    files: Sequence[Path],
    path: Path,
    *,
    shift_per_frame: int = 0,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """One Enhanced CT Image Storage file holding ``files`` as frames, in the given order.

    Orientation, pixel measures and (when the sources share it) the window go into the shared
    functional groups; position, rescale and differing windows into each frame's.
    ``shift_per_frame`` adds ``k * frame index`` to the stored values and subtracts it from that
    frame's RescaleIntercept: the same HU, readable only through the per-frame rescale. A
    GantryDetectorTilt of the sources goes into CTAcquisitionDetailsSequence.
    """
    sources = decoded(files)
    first = sources[0]
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop_uid
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PixelPaddingValue"):
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(sources)
    ds.Rows, ds.Columns = first.Rows, first.Columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = first.PixelRepresentation
    shared = Dataset()
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=first.ImageOrientationPatient)
    shared.PixelMeasuresSequence = _item(
        PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness
    )
    windows = {(str(s.WindowCenter), str(s.WindowWidth)) for s in sources}
    if len(windows) == 1:
        shared.FrameVOILUTSequence = _item(
            WindowCenter=first.WindowCenter, WindowWidth=first.WindowWidth
        )
    if "GantryDetectorTilt" in first:
        shared.CTAcquisitionDetailsSequence = _item(GantryDetectorTilt=first.GantryDetectorTilt)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    pixels = []
    for index, source in enumerate(sources):
        shift = shift_per_frame * index
        frame = Dataset()
        frame.PlanePositionSequence = _item(ImagePositionPatient=source.ImagePositionPatient)
        frame.PixelValueTransformationSequence = _item(
            RescaleSlope=source.RescaleSlope,
            RescaleIntercept=float(source.RescaleIntercept) - shift,
            RescaleType="HU",
        )
        frame.FrameContentSequence = _item(InStackPositionNumber=index + 1)
        if len(windows) > 1:
            frame.FrameVOILUTSequence = _item(
                WindowCenter=source.WindowCenter, WindowWidth=source.WindowWidth
            )
        frames.append(frame)
        stored = source.pixel_array.astype(np.int32) + shift
        pixels.append(stored.astype(source.pixel_array.dtype))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    volume = np.stack(pixels)
    ds.PixelData = volume.astype(volume.dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
