"""Demo assets: real SavedModels built into tmp_path, real DICOM files read back by pydicom."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from flaskmodel.demo.build import (
    DEMO_SERIES_SLICES,
    DEMO_SERIES_UID,
    REGION_NAMES,
    build_ct_classifier,
    build_demo,
    build_tiny,
    write_demo_series,
)
from flaskmodel.demo.models import import_tensorflow
from flaskmodel.demo.series import (
    BONE_HU,
    SOFT_TISSUE_WINDOW,
    demo_uid,
    region_of,
    slice_position,
    window_unit,
)

CT_SIZE = 64
N_SLICES = 24
SERIES_SIZE = 64


@pytest.fixture(scope="module")
def tf() -> Any:
    return import_tensorflow()


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory, tf: Any) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_ct_classifier(root, size=CT_SIZE)
    build_tiny(root)
    return root


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_series(tmp_path_factory.mktemp("data"), n_slices=N_SLICES, size=SERIES_SIZE)


def _signature(tf: Any, path: Path) -> Any:
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def _read_series(folder: Path) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("slice-*.dcm"))]
        for ds in datasets:
            _ = ds.pixel_array
    return datasets


def _hu(ds: Any) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_ct_classifier_signature_and_softmax(tf: Any, models_root: Path) -> None:
    fn = _signature(tf, models_root / "ct_classifier" / "1")
    _, inputs = fn.structured_input_signature
    assert list(inputs) == ["image"]
    assert inputs["image"].dtype == tf.float32
    assert inputs["image"].shape.as_list() == [None, CT_SIZE, CT_SIZE, 1]
    assert list(fn.structured_outputs) == ["scores"]
    assert fn.structured_outputs["scores"].shape.as_list() == [None, 12]

    batch = np.random.default_rng(0).random((3, CT_SIZE, CT_SIZE, 1), dtype=np.float32)
    scores = fn(image=tf.constant(batch))["scores"].numpy()
    assert scores.shape == (3, 12)
    assert scores.dtype == np.float32
    assert np.all(scores >= 0)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_ct_classifier_config(models_root: Path) -> None:
    config = json.loads((models_root / "ct_classifier" / "flaskmodel.json").read_text())
    assert config == {
        "class_names": list(REGION_NAMES),
        "preprocess": {
            "input_size": [CT_SIZE, CT_SIZE],
            "window": "soft_tissue",
            "normalise": "unit",
            "resize": "tf_bilinear",
        },
        "postprocess": "monotonic",
        "batch_size": 16,
    }
    assert len(REGION_NAMES) == 12
    assert REGION_NAMES[0] == "head"
    assert REGION_NAMES[-1] == "legs"


def test_tiny_signature_and_softmax(tf: Any, models_root: Path) -> None:
    fn = _signature(tf, models_root / "tiny" / "1")
    _, inputs = fn.structured_input_signature
    assert list(inputs) == ["x"]
    assert inputs["x"].dtype == tf.float32
    assert inputs["x"].shape.as_list() == [None, 32]
    assert list(fn.structured_outputs) == ["probabilities"]
    assert fn.structured_outputs["probabilities"].shape.as_list() == [None, 10]

    batch = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    probs = fn(x=tf.constant(batch))["probabilities"].numpy()
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(probs[0], probs[1])


def test_builds_are_deterministic(tf: Any, models_root: Path, tmp_path: Path) -> None:
    build_ct_classifier(tmp_path, size=CT_SIZE)
    build_tiny(tmp_path)
    rng = np.random.default_rng(2)
    image = tf.constant(rng.random((2, CT_SIZE, CT_SIZE, 1), dtype=np.float32))
    x = tf.constant(rng.standard_normal((2, 32)).astype(np.float32))
    for name, feed, key in (
        ("ct_classifier", {"image": image}, "scores"),
        ("tiny", {"x": x}, "probabilities"),
    ):
        first = _signature(tf, models_root / name / "1")(**feed)[key].numpy()
        second = _signature(tf, tmp_path / name / "1")(**feed)[key].numpy()
        np.testing.assert_array_equal(first, second)


def test_ct_classifier_follows_the_phantom_head_to_feet(
    tf: Any, models_root: Path, series_dir: Path
) -> None:
    datasets = _read_series(series_dir)
    slices = np.stack(
        [window_unit(_hu(ds).astype(np.float32), SOFT_TISSUE_WINDOW) for ds in datasets]
    )[..., None]
    resized = tf.image.resize(slices, (CT_SIZE, CT_SIZE), method="bilinear")
    scores = _signature(tf, models_root / "ct_classifier" / "1")(image=resized)["scores"].numpy()
    predicted = scores.argmax(axis=1)
    # Slice 1 is the head; the predicted regions walk down the body without going back.
    assert predicted[0] == 0
    assert predicted[-1] == len(REGION_NAMES) - 1
    assert np.all(np.diff(predicted) >= 0)
    assert len(set(predicted.tolist())) == len(REGION_NAMES)


def test_demo_series_reads_back_as_valid_ct(series_dir: Path) -> None:
    assert series_dir.name == DEMO_SERIES_UID
    datasets = _read_series(series_dir)
    assert len(datasets) == N_SLICES
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, N_SLICES + 1))
    assert len({ds.SOPInstanceUID for ds in datasets}) == N_SLICES
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    np.testing.assert_allclose(np.diff(z), -5.0)
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.SeriesInstanceUID == DEMO_SERIES_UID
        assert ds.StudyInstanceUID == datasets[0].StudyInstanceUID
        assert ds.Modality == "CT"
        assert str(ds.PatientName) == "Demo^Phantom"
        assert ds.PatientID == "DEMO"
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([500 / SERIES_SIZE] * 2)
        assert float(ds.SliceThickness) == 5.0
        assert (ds.Rows, ds.Columns) == (SERIES_SIZE, SERIES_SIZE)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)


def test_demo_series_hounsfield_units(series_dir: Path) -> None:
    bone_slices = 0
    for index, ds in enumerate(_read_series(series_dir)):
        hu = _hu(ds)
        corner = hu[:6, :6]
        assert abs(float(np.median(corner)) + 1000) < 15, "air outside the body"
        assert np.mean(np.abs(hu + 1000) < 40) > 0.3
        assert np.sum(np.abs(hu - 40) < 30) >= 30, "soft tissue inside the body"
        bone_slices += int(hu.max() > BONE_HU - 100)
        assert hu.min() >= -1024
        lung = np.mean(np.abs(hu + 800) < 50)
        if REGION_NAMES[region_of(slice_position(index, N_SLICES))] == "upper_chest":
            assert lung > 0.05, "lungs in the chest"
        if REGION_NAMES[region_of(slice_position(index, N_SLICES))] in ("head", "pelvis", "legs"):
            assert lung == 0
    assert bone_slices == N_SLICES


def test_demo_series_uid_is_the_documented_uuid() -> None:
    assert UID(DEMO_SERIES_UID).is_valid
    assert demo_uid("series") == DEMO_SERIES_UID


def test_write_demo_series_is_deterministic(series_dir: Path, tmp_path: Path) -> None:
    again = write_demo_series(tmp_path, n_slices=N_SLICES, size=SERIES_SIZE)
    for a, b in zip(_read_series(series_dir), _read_series(again), strict=True):
        assert a.SOPInstanceUID == b.SOPInstanceUID
        assert a.PixelData == b.PixelData


def test_build_demo_second_run_is_a_no_op(tf: Any, tmp_path: Path) -> None:
    models, data = tmp_path / "models", tmp_path / "data"
    first = build_demo(models, data, ct_size=CT_SIZE)
    assert [line.split(":")[0] for line in first] == [
        "ct_classifier",
        "tiny",
        f"series {DEMO_SERIES_UID}",
    ]
    assert "built" in first[0] and "built" in first[1] and "wrote" in first[2]
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(list((data / DEMO_SERIES_UID).glob("slice-*.dcm"))) == DEMO_SERIES_SLICES
    assert not [p for p in tmp_path.rglob(".*")], "no temporary folders left behind"
    mtimes = {p: p.stat().st_mtime_ns for p in files}

    second = build_demo(models, data, ct_size=CT_SIZE)
    assert all(": exists " in line for line in second)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    other_size = build_demo(models, data, ct_size=CT_SIZE * 2)
    assert f"not {CT_SIZE * 2}x{CT_SIZE * 2}" in other_size[0]
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes


def test_build_demo_rewrites_an_incomplete_series(tf: Any, tmp_path: Path) -> None:
    models, data = tmp_path / "models", tmp_path / "data"
    build_demo(models, data, ct_size=CT_SIZE)
    (data / DEMO_SERIES_UID / "slice-001.dcm").unlink()
    lines = build_demo(models, data, ct_size=CT_SIZE)
    assert "exists" in lines[0] and "exists" in lines[1]
    assert "wrote" in lines[2]
    assert len(list((data / DEMO_SERIES_UID).glob("slice-*.dcm"))) == DEMO_SERIES_SLICES


def test_import_does_not_load_tensorflow_or_pydicom() -> None:
    code = (
        "import sys, flaskmodel.demo.build\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'pydicom') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
