"""The JPEG 2000 series the benchmark builds, and the limit it compares the series rows with."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from flaskmodel.bench.decode_limit import Ceiling, measure_ceiling
from flaskmodel.bench.inprocess import Limit
from flaskmodel.bench.j2k_series import (
    J2K_SERIES_UID,
    J2K_SPACING_MM,
    J2K_STUDY_UID,
    build_j2k_series,
    sample_folder,
)
from flaskmodel.dicom.series import scan_series
from tests.conftest import CHEST, SAMPLES

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def test_the_samples_are_found_from_the_repository() -> None:
    assert sample_folder() == (SAMPLES / CHEST).resolve()


def test_the_series_reuses_the_samples_compressed_pixel_data_under_new_uids(
    tmp_path: Path,
) -> None:
    line = build_j2k_series(tmp_path, slices=45)
    assert "45 slices written from 20 samples" in line
    series = scan_series(tmp_path, J2K_SERIES_UID)
    assert len(series.slices) == 45
    assert series.sort_method == "geometry"
    assert series.spacing == pytest.approx(J2K_SPACING_MM)
    assert series.warnings == ()
    assert len({s.sop_instance_uid for s in series.slices}) == 45
    samples = sorted(SAMPLES.joinpath(CHEST).glob("*.dcm"))
    first = pydicom.dcmread(samples[0])
    # Instance 1 is the top slice: the highest z, last in ascending-z order.
    top = pydicom.dcmread(series.slices[-1].path)
    assert top.InstanceNumber == 1 and top.StudyInstanceUID == J2K_STUDY_UID
    assert top.file_meta.TransferSyntaxUID == JPEG2000_LOSSLESS
    assert top.PixelData == first.PixelData
    assert top.file_meta.MediaStorageSOPInstanceUID == top.SOPInstanceUID
    # Instance 21 uses the first sample again.
    again = next(s for s in series.slices if s.instance_number == 21)
    assert pydicom.dcmread(again.path).PixelData == first.PixelData


def test_a_complete_series_is_not_written_again(tmp_path: Path) -> None:
    build_j2k_series(tmp_path, slices=3)
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / J2K_SERIES_UID).iterdir()}
    assert "exists (3 slices)" in build_j2k_series(tmp_path, slices=3)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / J2K_SERIES_UID).iterdir()} == written
    assert not list(tmp_path.glob(".*"))  # no half-written folder left behind


def test_the_limit_adds_the_cpu_seconds_of_decode_and_model() -> None:
    ceiling = Ceiling(
        one_thread=30, two_threads=31, processes=60, process_count=2, model=240, batch=16
    )
    assert ceiling.combined == pytest.approx(48.0)  # 1 / (1/60 + 1/240)
    note = " ".join(ceiling.notes())
    assert "1 / (1/60.0 + 1/240.0) = 48.0 slices/s" in note
    assert "31.0 with 2 threads" in note


def test_measure_ceiling_times_the_workers_own_per_slice_work(
    tmp_path: Path, models_root: Path
) -> None:
    build_j2k_series(tmp_path, slices=20)
    limits = [Limit("ct_classifier", 1, 50.0, 20.0), Limit("ct_classifier", 16, 400.0, 40.0)]
    ceiling = measure_ceiling(models_root, tmp_path, J2K_SERIES_UID, "ct_classifier", limits)
    assert ceiling.model == 400.0 and ceiling.batch == 16
    assert min(ceiling.one_thread, ceiling.two_threads, ceiling.processes) > 0
    assert ceiling.combined < min(ceiling.processes, ceiling.model)
