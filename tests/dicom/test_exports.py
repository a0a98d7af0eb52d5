"""Series read from CD/USB export layouts: DICOMDIR, Philips DIRFILE catalogues, VERSION,
autorun.inf, viewer programs and text next to the images (flaskmodel.dicom.series)."""

from __future__ import annotations

import gc
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from flaskmodel.dicom.pixels import load_hu
from flaskmodel.dicom.series import scan_series
from flaskmodel.errors import DicomReadError, SeriesNotFound

from .conftest import Samples

Copier = Callable[[Sequence[Path], Path], Path]


def localizer_from(source: Path) -> pydicom.Dataset:
    """A scout made from a sample: ImageType LOCALIZER, a coronal plane, a new instance."""
    ds = pydicom.dcmread(source)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1
    return ds


def write_cd_export(samples: Samples, cd: Path) -> list[str]:
    """A CD export of the 20-slice series, one slice of another series and a scout of the first,
    in a DICOMDIR file-set (PT000000/ST000000/SE00000n/IM00000n) with what real exports carry
    beside it. Returns the non-DICOM files written, relative to ``cd``."""
    with warnings.catch_warnings():
        # FileSet stages files in a temporary folder that it leaves to be collected.
        warnings.simplefilter("ignore", ResourceWarning)
        fileset = FileSet()
        for source in [*samples.files(samples.j2k), *samples.files(samples.b70f)]:
            ds = pydicom.dcmread(source)
            ds.StudyID = "1"  # a DICOMDIR STUDY record needs one; the samples have none
            fileset.add(ds)
        scout = localizer_from(samples.files(samples.j2k)[0])
        scout.StudyID = "1"
        fileset.add(scout)
        fileset.write(cd)
        del fileset
        gc.collect()

    (cd / "VERSION").write_text("1.0\r\n")
    (cd / "autorun.inf").write_text("[autorun]\r\nopen=viewer\\Viewer.exe\r\n")
    (cd / "README.TXT").write_text("Patient CD. Insert into a PC and run Viewer.exe.\r\n")
    viewer = cd / "viewer"
    viewer.mkdir()
    (viewer / "Viewer.exe").write_bytes(b"MZ\x90\x00" + bytes(60) + b"PE\x00\x00" + bytes(4000))
    (viewer / "dcmcodec.dll").write_bytes(b"MZ\x90\x00" + bytes(2000))
    (viewer / "settings.xml").write_text('<?xml version="1.0"?><viewer lang="en"/>\n')
    tree = sorted(p for p in cd.rglob("*") if p.is_dir() and p.name.startswith(("PT", "ST", "SE")))
    folders = [cd, *tree]
    for number, folder in enumerate(folders):
        # Philips writes a binary DIRFILE catalogue into every folder: no DICM preamble.
        (folder / "DIRFILE").write_bytes(b"\x01\x00\x00\x00PHILIPS DIRFILE" + bytes([number]) * 300)
    # One DIRFILE that does carry a preamble (pydicom half-reads such files): skipped by name.
    (folders[-1] / "DIRFILE").write_bytes(bytes(128) + b"DICM" + bytes(200))
    written = [p for p in cd.rglob("*") if p.is_file() and not p.name.startswith("IM")]
    return sorted(p.relative_to(cd).as_posix() for p in written)


@pytest.fixture
def cd_export(samples: Samples, data_root: Path) -> tuple[Path, list[str]]:
    # A folder holding several series is addressed by the SeriesInstanceUID wanted.
    cd = data_root / samples.j2k_uid
    return cd, write_cd_export(samples, cd)


def test_cd_export_sorts_like_the_plain_folder_and_counts_the_skipped_files(
    samples: Samples, data_root: Path, cd_export: tuple[Path, list[str]]
) -> None:
    _, skipped = cd_export
    plain = scan_series(samples.root, samples.j2k)

    series = scan_series(data_root, samples.j2k_uid)

    assert [s.sop_instance_uid for s in series.slices] == [s.sop_instance_uid for s in plain.slices]
    assert [s.z for s in series.slices] == pytest.approx([s.z for s in plain.slices])
    assert series.sort_method == "geometry" and series.spacing == pytest.approx(8.0)
    assert len(skipped) == 12  # DICOMDIR, VERSION, autorun.inf, README.TXT, 3 viewer, 5 DIRFILE
    assert sum(1 for name in skipped if name.endswith("DIRFILE")) == 5
    first_three = ["DICOMDIR", "DIRFILE", "README.TXT"]  # walk order: the top folder first
    examples = ", ".join(f"{samples.j2k_uid}/{name}" for name in first_three)
    assert list(series.warnings) == [
        f"skipped 12 non-DICOM file(s), e.g. {examples}",
        "dropped 1 localizer image(s)",
        f"ignored 1 other series in the folder: {samples.b70f_uid}",
    ]
    assert load_hu(series.slices[0], data_root).shape == (512, 512)


def test_the_other_series_of_the_export_reads_through_a_folder_named_after_it(
    samples: Samples, data_root: Path, cd_export: tuple[Path, list[str]]
) -> None:
    cd, _ = cd_export
    (data_root / samples.b70f_uid).symlink_to(cd, target_is_directory=True)

    series = scan_series(data_root, samples.b70f_uid)

    assert [s.z for s in series.slices] == [200.0]
    assert any(w.startswith("skipped 12 non-DICOM file(s)") for w in series.warnings)


@pytest.mark.parametrize("keep", [1000, -20_000])
def test_a_truncated_image_of_the_series_still_fails_naming_it(
    samples: Samples, data_root: Path, cd_export: tuple[Path, list[str]], keep: int
) -> None:
    # 1000 bytes: the header itself is cut (the scan fails); all but the last 20 kB: the header
    # is whole and the JPEG 2000 codestream is cut (reading the slice fails).
    cd, _ = cd_export
    victim = cd / "PT000000" / "ST000000" / "SE000000" / "IM000007"
    assert pydicom.dcmread(victim, stop_before_pixels=True).SeriesInstanceUID == samples.j2k_uid
    victim.write_bytes(victim.read_bytes()[:keep])
    name = f"{samples.j2k_uid}/PT000000/ST000000/SE000000/IM000007"

    with pytest.raises(DicomReadError) as raised:
        series = scan_series(data_root, samples.j2k_uid)
        for ref in series.slices:
            load_hu(ref, data_root)
    assert name in raised.value.message


def test_a_folder_of_only_non_dicom_files_says_what_it_skipped(
    samples: Samples, data_root: Path, cd_export: tuple[Path, list[str]]
) -> None:
    cd, _ = cd_export
    shutil.copytree(cd / "viewer", data_root / "viewer-only")

    with pytest.raises(SeriesNotFound, match=r"no image slices .*skipped 3 non-DICOM file\(s\)"):
        scan_series(data_root, "viewer-only")


def test_a_data_set_without_the_part10_preamble_is_read_and_look_alikes_are_skipped(
    samples: Samples, data_root: Path, copy_samples: Copier
) -> None:
    # Old exports store bare data sets (no preamble, no file meta, implicit VR): DICOM all the
    # same. A file that merely starts like one but does not parse is not.
    folder = copy_samples(samples.files(samples.ge)[1:], data_root / "old")
    ds = pydicom.dcmread(samples.files(samples.ge)[0])
    del ds.file_meta
    ds.preamble = None
    ds.save_as(folder / "14", implicit_vr=True, little_endian=True, enforce_file_format=False)
    (folder / "junk").write_bytes(b"\x08\x00\x05\x00" + bytes(range(256)) * 4)

    series = scan_series(data_root, "old")

    assert [s.instance_number for s in series.slices] == [14, 15]
    assert "skipped 1 non-DICOM file(s), e.g. old/junk" in series.warnings
    reference = scan_series(samples.root, samples.ge).slices[0]
    np.testing.assert_array_equal(
        load_hu(series.slices[0], data_root), load_hu(reference, samples.root)
    )
