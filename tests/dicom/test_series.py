"""Scanning, grouping, sorting and path safety of DICOM series (flaskmodel.dicom.series)."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from flaskmodel.dicom.headers import SliceRef
from flaskmodel.dicom.pixels import load_hu
from flaskmodel.dicom.series import (
    SERIES_ID_PATTERN,
    Series,
    resolve_series_dir,
    scan_series,
)
from flaskmodel.errors import DicomReadError, InvalidSeriesId, SeriesError, SeriesNotFound

from .conftest import Samples, SliceWriter

Copier = Callable[[Sequence[Path], Path], Path]


# --- the real samples -------------------------------------------------------------------------


def test_j2k_series_sorts_by_projected_position(samples: Samples) -> None:
    series = scan_series(samples.root, samples.j2k)

    assert series.uid == samples.j2k_uid
    assert series.sort_method == "geometry"
    assert series.normal == pytest.approx((0.0, 0.0, 1.0))
    assert series.spacing == pytest.approx(8.0)
    assert series.warnings == ()
    assert [s.z for s in series.slices] == pytest.approx(np.arange(120.0, 273.0, 8.0))
    # Ascending z along +Z: feet first, so InstanceNumber (head→feet here) runs backwards.
    assert [s.instance_number for s in series.slices] == list(range(25, 5, -1))
    assert all(s.series_instance_uid == samples.j2k_uid for s in series.slices)
    assert series.slices[0].position == pytest.approx((-173.1767578125, -294.1767578125, 120.0))


def test_order_follows_position_not_names_or_instance_numbers(
    samples: Samples, data_root: Path
) -> None:
    reference = scan_series(samples.root, samples.j2k)
    folder = data_root / samples.j2k_uid
    rng = random.Random(7)
    files = samples.files(samples.j2k)
    rng.shuffle(files)
    misleading = list(range(1, len(files) + 1))
    rng.shuffle(misleading)
    for index, (source, number) in enumerate(zip(files, misleading, strict=True)):
        ds = pydicom.dcmread(source)
        ds.InstanceNumber = number
        nested = folder / f"part{index % 3}" / ("deep" if index % 2 else "")
        nested.mkdir(parents=True, exist_ok=True)
        ds.save_as(nested / f"{rng.getrandbits(40):x}", enforce_file_format=True)

    series = scan_series(data_root, samples.j2k_uid)

    assert [s.sop_instance_uid for s in series.slices] == [
        s.sop_instance_uid for s in reference.slices
    ]
    assert [s.z for s in series.slices] == pytest.approx([s.z for s in reference.slices])
    numbers = [s.instance_number for s in series.slices if s.instance_number is not None]
    assert len(numbers) == 20
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
    assert series.warnings == ()
    # The rewritten copies kept their (JPEG 2000) pixel data.
    np.testing.assert_array_equal(
        load_hu(series.slices[3], data_root), load_hu(reference.slices[3], samples.root)
    )


def test_tilted_ge_pair_projects_positions_on_the_oblique_normal(samples: Samples) -> None:
    series = scan_series(samples.root, samples.ge)

    assert series.uid == samples.ge_uid
    assert series.sort_method == "geometry"
    assert series.normal is not None
    normal = np.array(series.normal)
    assert normal == pytest.approx([0.0, 0.3173, 0.9483], abs=1e-3)
    assert np.linalg.norm(normal) == pytest.approx(1.0)
    first, second = series.slices
    assert (first.instance_number, second.instance_number) == (14, 15)
    for ref in series.slices:
        assert ref.position is not None
        assert ref.z == pytest.approx(float(np.dot(ref.position, normal)))
        assert abs(ref.z - ref.position[2]) > 1.0  # projected, not the raw z coordinate
    assert second.z - first.z == pytest.approx(1.081, abs=0.005)
    assert series.spacing == pytest.approx(1.081, abs=0.005)
    assert any("thickness varies" in w for w in series.warnings)


def test_tilted_ge_pair_reports_the_gantry_tilt(samples: Samples) -> None:
    series = scan_series(samples.root, samples.ge)

    assert series.warnings == (
        "gantry tilt 18.5° (GantryDetectorTilt); slices stack 18.5° off their normal",
        "slice thickness varies: 4, 7 mm",
    )


def test_mixed_folder_splits_by_series_instance_uid(
    samples: Samples, data_root: Path, copy_samples: Copier
) -> None:
    folder = copy_samples(samples.files(samples.j2k), data_root / samples.j2k_uid)
    # Renamed: both series have a 1-15.dcm.
    shutil.copy(samples.files(samples.b70f)[0], folder / "b70f-1-15.dcm")
    # Same folder under the other series' UID and under a plain name (symlinks inside the root).
    (data_root / samples.b70f_uid).symlink_to(folder, target_is_directory=True)
    (data_root / "mixed").symlink_to(folder, target_is_directory=True)

    j2k = scan_series(data_root, samples.j2k_uid)
    assert j2k.uid == samples.j2k_uid
    assert len(j2k.slices) == 20
    assert not any("duplicate" in w for w in j2k.warnings)
    assert any(samples.b70f_uid in w for w in j2k.warnings)  # the ignored series is reported

    b70f = scan_series(data_root, samples.b70f_uid)
    assert b70f.uid == samples.b70f_uid
    assert [s.z for s in b70f.slices] == [200.0]

    with pytest.raises(SeriesError) as raised:
        scan_series(data_root, "mixed")
    assert samples.j2k_uid in raised.value.message
    assert samples.b70f_uid in raised.value.message


def test_plain_folder_name_with_one_series(
    samples: Samples, data_root: Path, copy_samples: Copier
) -> None:
    copy_samples(samples.files(samples.ge), data_root / "head-ct_01")

    series = scan_series(data_root, "head-ct_01")

    assert series.uid == samples.ge_uid
    assert series.folder == (data_root / "head-ct_01").resolve()
    assert len(series.slices) == 2


def test_two_series_under_a_non_matching_name_is_an_error(
    samples: Samples, data_root: Path, copy_samples: Copier
) -> None:
    folder = copy_samples(samples.files(samples.ge), data_root / "study")
    copy_samples(samples.files(samples.b70f), folder)

    with pytest.raises(SeriesError, match="holds 2 series") as raised:
        scan_series(data_root, "study")
    assert samples.ge_uid in raised.value.message
    assert samples.b70f_uid in raised.value.message


# --- synthetic series -------------------------------------------------------------------------


def test_duplicates_and_gaps_are_reported(data_root: Path, write_slice: SliceWriter) -> None:
    for number, z in enumerate([0.0, 1.0, 2.0, 2.0, 3.0, 6.0, 7.0], start=1):
        write_slice(data_root / "synth" / f"{number}.dcm", z=z, instance_number=number)

    series = scan_series(data_root, "synth")

    assert len(series.slices) == 7
    assert series.spacing == pytest.approx(1.0)
    duplicate = [w for w in series.warnings if "duplicate position" in w]
    gaps = [w for w in series.warnings if "gap" in w]
    assert len(duplicate) == 1 and duplicate[0].startswith("1 duplicate")
    assert len(gaps) == 1 and "3.000 mm" in gaps[0]


def test_regular_synthetic_series_has_no_warnings(
    data_root: Path, write_slice: SliceWriter
) -> None:
    for number in range(5):
        write_slice(data_root / "even" / f"{number}.dcm", z=-2.5 * number, instance_number=number)

    series = scan_series(data_root, "even")

    assert series.warnings == ()
    assert series.spacing == pytest.approx(2.5)
    assert [s.instance_number for s in series.slices] == [4, 3, 2, 1, 0]


@pytest.mark.parametrize(
    ("orientation", "step", "warning"),
    [
        ((0, 1, 0, 0, 0, -1), (2.0, 0, 0), "slices are sagittal (90.0° from axial)"),
        ((1, 0, 0, 0, 0, -1), (0, 2.0, 0), "slices are coronal (90.0° from axial)"),
        # Axial planes rotated 30° about the left-right axis, stacked along their normal.
        ((1, 0, 0, 0, 0.866025, -0.5), (0, 1.0, 1.732051), "slices are oblique (30.0° from axial)"),
    ],
)
def test_non_axial_stacks_are_reported_with_their_angle(
    data_root: Path,
    write_slice: SliceWriter,
    orientation: tuple[float, ...],
    step: tuple[float, float, float],
    warning: str,
) -> None:
    for number in range(4):
        position = [number * v for v in step]
        write_slice(
            data_root / "plane" / f"{number}.dcm",
            position=position,
            orientation=orientation,
            instance_number=number + 1,
        )

    series = scan_series(data_root, "plane")

    assert series.sort_method == "geometry"
    assert series.spacing == pytest.approx(2.0)
    assert series.warnings == (warning,)


def test_a_stack_stepping_off_its_normal_is_reported_without_gantry_tag(
    data_root: Path, write_slice: SliceWriter
) -> None:
    # Axial planes whose positions move 1 mm forward per 3 mm up: a sheared (tilted) stack.
    for number in range(4):
        write_slice(
            data_root / "sheared" / f"{number}.dcm",
            position=(0.0, -1.0 * number, 3.0 * number),
            instance_number=number + 1,
        )

    series = scan_series(data_root, "sheared")

    assert series.warnings == ("slices stack 18.4° off their normal",)
    assert series.spacing == pytest.approx(3.0)


def test_small_or_zero_gantry_tilt_is_not_reported(
    data_root: Path, write_slice: SliceWriter
) -> None:
    for number, tilt in enumerate(["0", "-0.0", "0.3"]):
        write_slice(
            data_root / "flat" / f"{number}.dcm",
            z=float(number),
            instance_number=number + 1,
            extra={"GantryDetectorTilt": tilt},
        )

    assert scan_series(data_root, "flat").warnings == ()


def test_localizers_non_images_dicomdir_and_hidden_files_are_left_out(
    data_root: Path, write_slice: SliceWriter
) -> None:
    folder = data_root / "with-scout"
    for number in range(3):
        write_slice(folder / f"ax{number}.dcm", z=float(number), instance_number=number + 1)
    write_slice(
        folder / "scout.dcm",
        orientation=(0, 1, 0, 0, 0, -1),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        instance_number=99,
    )
    report = pydicom.dcmread(folder / "ax0.dcm")
    for keyword in ("Rows", "Columns", "PixelData", "ImagePositionPatient"):
        delattr(report, keyword)
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: not an image
    report.save_as(folder / "report.dcm", enforce_file_format=True)
    (folder / "DICOMDIR").write_bytes(b"not read at all")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")

    series = scan_series(data_root, "with-scout")

    assert [s.instance_number for s in series.slices] == [1, 2, 3]
    assert series.sort_method == "geometry"
    assert any("1 localizer" in w for w in series.warnings)
    assert any("1 non-image" in w for w in series.warnings)
    assert not any("orientation" in w for w in series.warnings)


def test_mixed_orientation_falls_back_to_instance_number(
    data_root: Path, write_slice: SliceWriter
) -> None:
    folder = data_root / "tilted-one"
    write_slice(folder / "a.dcm", z=0.0, instance_number=3)
    write_slice(folder / "b.dcm", z=1.0, instance_number=1)
    write_slice(folder / "c.dcm", z=2.0, instance_number=2, orientation=(1, 0, 0, 0, 0.9, -0.43))

    series = scan_series(data_root, "tilted-one")

    assert series.sort_method == "instance_number"
    assert series.normal is None and series.spacing is None
    assert [s.instance_number for s in series.slices] == [1, 2, 3]
    assert [s.z for s in series.slices] == [0.0, 1.0, 2.0]
    assert any("mixed orientation" in w for w in series.warnings)


def test_missing_geometry_falls_back_to_instance_number(
    data_root: Path, write_slice: SliceWriter
) -> None:
    folder = data_root / "no-geometry"
    for number in (5, 2, 9):
        write_slice(folder / f"{number}.dcm", z=None, orientation=None, instance_number=number)

    series = scan_series(data_root, "no-geometry")

    assert series.sort_method == "instance_number"
    assert [s.instance_number for s in series.slices] == [2, 5, 9]
    assert [s.position for s in series.slices] == [None, None, None]
    assert any("lack ImagePositionPatient" in w for w in series.warnings)


# --- path safety and errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "series_id",
    ["..", "../x", "%2e%2e", "/etc", "", ".", ".hidden", "a/b", "a\\b", "x" * 129, "uid\n"],
)
def test_series_ids_outside_the_allow_list_are_refused(
    data_root: Path, series_id: str, opened_files: list[Path]
) -> None:
    with pytest.raises(InvalidSeriesId):
        resolve_series_dir(data_root, series_id)
    with pytest.raises(InvalidSeriesId):
        scan_series(data_root, series_id)
    assert opened_files == []


def test_allow_list_accepts_uids_and_plain_names() -> None:
    for good in ["1.2.840.113619.2.55", "head-ct_01", "A", "x" * 128, "a..b"]:
        assert SERIES_ID_PATTERN.match(good)


def test_symlinked_series_folder_pointing_outside_is_refused(
    samples: Samples,
    tmp_path: Path,
    data_root: Path,
    copy_samples: Copier,
    opened_files: list[Path],
) -> None:
    outside = copy_samples(samples.files(samples.ge), tmp_path / "outside")
    (data_root / "escape").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InvalidSeriesId, match="outside the data root"):
        resolve_series_dir(data_root, "escape")
    with pytest.raises(InvalidSeriesId):
        scan_series(data_root, "escape")
    assert opened_files == []


def test_no_file_outside_the_root_is_opened(
    samples: Samples,
    tmp_path: Path,
    data_root: Path,
    copy_samples: Copier,
    opened_files: list[Path],
) -> None:
    outside = copy_samples(samples.files(samples.ge), tmp_path / "outside")
    folder = copy_samples(samples.files(samples.b70f), data_root / "series")
    (folder / "linked.dcm").symlink_to(outside / "14.dcm")
    (folder / "linked-dir").symlink_to(outside, target_is_directory=True)
    shared = copy_samples(samples.files(samples.b70f), data_root / "store")
    (folder / "inside-link.dcm").symlink_to(shared / "1-15.dcm")
    (folder / "same-file-again.dcm").symlink_to(folder / "1-15.dcm")

    series = scan_series(data_root, "series")

    root = data_root.resolve()
    assert opened_files, "the recorder saw no reads"
    assert all(path.is_relative_to(root) for path in opened_files)
    assert (shared / "1-15.dcm").resolve() in opened_files  # a link inside the root is followed
    assert len(opened_files) == len(set(opened_files)) == 2  # series/1-15.dcm is read once
    assert series.uid == samples.b70f_uid
    assert len(series.slices) == 1  # the store's copy is the same instance
    assert any("repeated copy" in w for w in series.warnings)
    assert any("linked.dcm" in w for w in series.warnings)
    assert any("linked-dir" in w for w in series.warnings)

    stray = SliceRef(
        path=outside / "14.dcm",
        sop_instance_uid="1.2",
        instance_number=14,
        position=None,
        z=0.0,
        series_instance_uid=samples.ge_uid,
    )
    opened_files.clear()
    with pytest.raises(InvalidSeriesId):
        load_hu(stray, data_root)
    assert opened_files == []


def test_missing_or_empty_series_folder_is_not_found(data_root: Path) -> None:
    with pytest.raises(SeriesNotFound):
        scan_series(data_root, "1.2.3.4")
    (data_root / "empty" / "nested").mkdir(parents=True)
    with pytest.raises(SeriesNotFound, match="no image slices"):
        scan_series(data_root, "empty")


def test_a_non_dicom_file_is_skipped_and_named_in_the_warnings(
    samples: Samples, data_root: Path, copy_samples: Copier
) -> None:
    # Issue 14 changed this: a file that is not DICOM at all used to fail the scan.
    folder = copy_samples(samples.files(samples.ge), data_root / "broken")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("this is not DICOM\n" * 20)

    series = scan_series(data_root, "broken")

    assert len(series.slices) == 2
    assert "skipped 1 non-DICOM file(s), e.g. broken/sub/notes.txt" in series.warnings


def test_a_corrupt_header_after_the_preamble_is_an_error_naming_the_file(
    samples: Samples, data_root: Path, copy_samples: Copier
) -> None:
    folder = copy_samples(samples.files(samples.ge), data_root / "broken")
    data = bytearray(samples.files(samples.ge)[1].read_bytes())
    # Keep the preamble and the file meta, then claim an element far longer than the file.
    start = data.index(b"\x08\x00\x05\x00")  # (0008,0005) SpecificCharacterSet
    data[start : start + 8] = b"\x08\x00\x08\x00UN\x00\x00"
    data[start + 8 : start + 12] = (0x7FFFFFF0).to_bytes(4, "little")
    (folder / "15.dcm").write_bytes(bytes(data))

    with pytest.raises(DicomReadError) as raised:
        scan_series(data_root, "broken")
    assert "broken/15.dcm" in raised.value.message


@pytest.mark.parametrize("keep", [300, 1000])
def test_a_truncated_header_is_an_error_naming_the_file(
    samples: Samples, data_root: Path, keep: int
) -> None:
    # pydicom reads truncated files without complaint: 300 bytes leave only the file meta, 1000
    # bytes a CT header without Rows/Columns. Neither may pass as a "non-image object".
    folder = data_root / "cut"
    folder.mkdir()
    shutil.copy(samples.files(samples.ge)[0], folder / "14.dcm")
    (folder / "15.dcm").write_bytes(samples.files(samples.ge)[1].read_bytes()[:keep])

    with pytest.raises(DicomReadError, match=r"cut/15\.dcm"):
        scan_series(data_root, "cut")


def test_unlistable_subfolder_is_an_error(
    samples: Samples, data_root: Path, copy_samples: Copier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.walk drops listing errors unless told otherwise; a folder we cannot list must fail the
    # scan. chmod cannot provoke this when the tests run as root, so the listing call is wrapped.
    folder = copy_samples(samples.files(samples.ge), data_root / "locked")
    private = folder / "private"
    private.mkdir()
    real_scandir = os.scandir

    def scandir(path: str) -> Any:
        if Path(path) == private:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SeriesError, match="locked/private"):
        scan_series(data_root, "locked")


# --- select -----------------------------------------------------------------------------------


@pytest.fixture
def ten_slices(data_root: Path, write_slice: SliceWriter) -> Series:
    for number in range(10):
        write_slice(data_root / "ten" / f"{number}.dcm", z=float(number), instance_number=number)
    return scan_series(data_root, "ten")


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [(None, None, list(range(10))), (0, 3, [0, 1, 2]), (7, None, [7, 8, 9]), (None, 2, [0, 1]),
     (9, 10, [9]), (0, 10, list(range(10)))],
)  # fmt: skip
def test_select_returns_the_half_open_range(
    ten_slices: Series, start: int | None, stop: int | None, expected: list[int]
) -> None:
    assert [s.instance_number for s in ten_slices.select(start, stop)] == expected


@pytest.mark.parametrize(
    ("start", "stop", "message"),
    [(3, 3, "empty"), (5, 2, "empty"), (10, None, "past the end"), (12, 15, "past the end"),
     (0, 11, "past the end"), (-1, 4, "negative"), (0, -2, "negative")],
)  # fmt: skip
def test_select_refuses_bad_ranges(
    ten_slices: Series, start: int | None, stop: int | None, message: str
) -> None:
    with pytest.raises(SeriesError, match=message) as raised:
        ten_slices.select(start, stop)
    assert "has 10 slices" in raised.value.message
