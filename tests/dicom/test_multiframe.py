"""Multi-frame CT (Enhanced and Legacy Converted Enhanced CT Image Storage): each frame is a slice,
sorted, decoded and rescaled on its own (flaskmodel.dicom.headers/series/pixels)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from flaskmodel.dicom.pixels import AIR_HU, file_window, load_hu
from flaskmodel.dicom.series import Series, scan_series
from flaskmodel.errors import DicomReadError, SeriesError

from .conftest import Samples, SliceWriter, write_enhanced_ct, write_legacy_enhanced


def assert_same_slices(frames: Series, root: Path, singles: Series, samples_root: Path) -> None:
    """Slice by slice: the same place in the stack, the same HU and the same window."""
    assert len(frames.slices) == len(singles.slices)
    assert frames.sort_method == singles.sort_method == "geometry"
    assert frames.normal == pytest.approx(singles.normal)
    assert frames.spacing == pytest.approx(singles.spacing)
    for frame, single in zip(frames.slices, singles.slices, strict=True):
        assert frame.position == pytest.approx(single.position)
        assert frame.z == pytest.approx(single.z)
        np.testing.assert_array_equal(load_hu(frame, root), load_hu(single, samples_root))
        assert file_window(frame, root) == file_window(single, samples_root)


def test_legacy_converted_j2k_frames_sort_and_read_like_the_single_files(
    samples: Samples, data_root: Path
) -> None:
    files = samples.files(samples.j2k)  # head→feet: frame 1 is the top slice
    image = write_legacy_enhanced(
        files, data_root / "lce" / "volume.dcm", transfer_syntax=JPEG2000Lossless
    )
    singles = scan_series(samples.root, samples.j2k)

    series = scan_series(data_root, "lce")

    assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"
    assert series.uid == image.SeriesInstanceUID
    assert series.warnings == ()
    assert [s.frame_number for s in series.slices] == list(range(20, 0, -1))
    assert {s.sop_instance_uid for s in series.slices} == {image.SOPInstanceUID}
    assert len({s.key for s in series.slices}) == 20
    assert series.slices[0].key == f"{image.SOPInstanceUID}:20"
    assert_same_slices(series, data_root, singles, samples.root)


def test_enhanced_ct_takes_position_and_rescale_from_each_frame(
    samples: Samples, data_root: Path
) -> None:
    files = samples.files(samples.j2k)
    random.Random(14).shuffle(files)
    # Stored values shifted by 3 per frame, intercepts the other way: only per-frame rescale
    # gives the originals' HU.
    image = write_enhanced_ct(files, data_root / "enh" / "ct.dcm", shift_per_frame=3)
    singles = scan_series(samples.root, samples.j2k)

    series = scan_series(data_root, "enh")

    assert series.warnings == ()
    by_name = {path.name: number for number, path in enumerate(files, start=1)}
    expected = [by_name[f"1-{s.instance_number:02d}.dcm"] for s in singles.slices]
    assert [s.frame_number for s in series.slices] == expected
    assert all(s.instance_number == image.InstanceNumber for s in series.slices)
    assert_same_slices(series, data_root, singles, samples.root)
    assert file_window(series.slices[0], data_root) == (40.0, 350.0)  # the shared FrameVOILUT


def test_frames_are_read_from_one_parse_of_the_file(
    samples: Samples, data_root: Path, opened_files: list[Path]
) -> None:
    path = data_root / "lce" / "volume.dcm"
    write_legacy_enhanced(samples.files(samples.j2k)[:6], path, transfer_syntax=JPEG2000Lossless)
    series = scan_series(data_root, "lce")
    opened_files.clear()

    volume = [load_hu(ref, data_root) for ref in series.slices]
    windows = [file_window(ref, data_root) for ref in series.slices]

    assert opened_files == [path.resolve()]  # once for six frames and their windows
    assert len({hu.tobytes() for hu in volume}) == 6
    assert windows == [(40.0, 350.0)] * 6


def test_enhanced_ct_of_the_tilted_ge_pair_reports_the_tilt_and_keeps_the_padding(
    samples: Samples, data_root: Path
) -> None:
    write_enhanced_ct(samples.files(samples.ge)[::-1], data_root / "ge" / "ct.dcm")
    singles = scan_series(samples.root, samples.ge)

    series = scan_series(data_root, "ge")

    assert "gantry tilt 18.5° (GantryDetectorTilt); slices stack 18.5° off their normal" in (
        series.warnings
    )
    assert [s.frame_number for s in series.slices] == [2, 1]
    assert_same_slices(series, data_root, singles, samples.root)
    # GE pads outside the field of view with -1500; those pixels read as air, as in the originals.
    stored = pydicom.dcmread(samples.files(samples.ge)[0]).pixel_array
    padding = stored == -1500
    assert padding.any()
    assert np.all(load_hu(series.slices[0], data_root)[padding] == AIR_HU)


def test_frames_without_functional_groups_fall_back_to_frame_order(
    data_root: Path, write_slice: SliceWriter
) -> None:
    stored = np.arange(3 * 4 * 4, dtype=np.int16).reshape(3, 4, 4)
    write_slice(data_root / "cine" / "mf.dcm", pixels=stored, frames=3)

    series = scan_series(data_root, "cine")

    assert series.sort_method == "instance_number"
    assert [s.frame_number for s in series.slices] == [1, 2, 3]
    assert any("lack ImagePositionPatient" in w for w in series.warnings)
    assert not any("duplicate InstanceNumber" in w for w in series.warnings)
    for ref, frame in zip(series.slices, stored, strict=True):
        np.testing.assert_array_equal(load_hu(ref, data_root), frame.astype(np.float32) - 1024)


def test_a_frame_the_file_does_not_have_is_an_error(samples: Samples, data_root: Path) -> None:
    write_enhanced_ct(samples.files(samples.ge), data_root / "ge" / "ct.dcm")
    ref = scan_series(data_root, "ge").slices[0]
    stray = dataclasses.replace(ref, frame_number=3)

    with pytest.raises(SeriesError, match=r"ge/ct\.dcm' has no frame 3 \(2 frames\)"):
        load_hu(stray, data_root)
    with pytest.raises(SeriesError, match="multi-frame"):
        load_hu(dataclasses.replace(ref, frame_number=None), data_root)


def test_per_frame_items_that_do_not_match_the_frame_count_name_the_file(
    samples: Samples, data_root: Path
) -> None:
    path = data_root / "ge" / "ct.dcm"
    write_enhanced_ct(samples.files(samples.ge), path)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.save_as(path)

    with pytest.raises(DicomReadError, match=r"'ge/ct\.dcm' has NumberOfFrames 3 but 2"):
        scan_series(data_root, "ge")


def test_a_frame_that_does_not_decode_names_file_and_frame(
    samples: Samples, data_root: Path
) -> None:
    path = data_root / "lce" / "volume.dcm"
    write_legacy_enhanced(samples.files(samples.j2k)[:4], path, transfer_syntax=JPEG2000Lossless)
    data = bytearray(path.read_bytes())
    start = data.rindex(b"\xff\x4f\xff\x51")  # SOC + SIZ of the last frame's codestream
    data[start : start + 4000] = bytes(4000)
    path.write_bytes(bytes(data))
    series = scan_series(data_root, "lce")  # frames 4, 3, 2, 1: the last frame is the lowest

    with pytest.raises(DicomReadError, match=r"frame 4 of 'lce/volume\.dcm'"):
        load_hu(series.slices[0], data_root)
    assert load_hu(series.slices[1], data_root).shape == (512, 512)  # the other frames still do
