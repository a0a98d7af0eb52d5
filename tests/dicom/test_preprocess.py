"""HU reading (flaskmodel.dicom.pixels.load_hu/file_window) and flaskmodel.dicom.preprocess.

Resizing has its own module, test_resize.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.pixels.processing import apply_modality_lut  # = pydicom.pixels.apply_modality_lut

from flaskmodel.dicom.headers import SliceRef
from flaskmodel.dicom.pixels import file_window, load_hu
from flaskmodel.dicom.preprocess import (
    WINDOW_PRESETS,
    PreprocessConfig,
    WindowSpec,
    apply_window,
    preprocess_slice,
    resolve_window,
)
from flaskmodel.dicom.series import scan_series
from flaskmodel.errors import DicomReadError, SeriesError

from .conftest import Samples, SliceWriter


def ref_for(path: Path) -> SliceRef:
    """A SliceRef for one file (load_hu and file_window only use the path)."""
    return SliceRef(
        path=path,
        sop_instance_uid="1.2.3",
        instance_number=None,
        position=None,
        z=0.0,
        series_instance_uid="1.2.3.4",
    )


# --- load_hu ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("tcia-lung-pet-ct-dx-A0002-chest-B70f-original", "1-15.dcm"),  # uncompressed
        ("tcia-lung-pet-ct-dx-A0002-chest-B40f-j2k", "1-10.dcm"),  # JPEG 2000 lossless
    ],
)
def test_load_hu_equals_pydicom_modality_lut(samples: Samples, folder: str, name: str) -> None:
    path = samples.root / folder / name
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)

    hu = load_hu(ref_for(path), samples.root)

    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, expected)


def test_compressed_j2k_slice_decodes_to_the_documented_range(samples: Samples) -> None:
    hu = load_hu(ref_for(samples.root / samples.j2k / "1-15.dcm"), samples.root)

    assert hu.shape == (512, 512)
    assert (float(hu.min()), float(hu.max())) == (-1024.0, 1341.0)  # README file table
    assert -1000 < float(np.median(hu)) < 500  # a chest, not noise


def test_whole_j2k_series_loads_in_sort_order(samples: Samples) -> None:
    series = scan_series(samples.root, samples.j2k)
    volume = np.stack([load_hu(ref, samples.root) for ref in series.slices])
    assert volume.shape == (20, 512, 512)
    assert volume.min() == -1024.0
    assert 1000 < volume.max() < 2000


def test_ge_padding_is_masked(samples: Samples) -> None:
    path = samples.root / samples.ge / "14.dcm"
    raw = pydicom.dcmread(path).pixel_array
    padded = raw == -1500
    assert padded.sum() > 1000  # the sample really has padding outside the field of view

    hu = load_hu(ref_for(path), samples.root)

    assert not (hu == -1500).any()
    genuine_min = float(raw[~padded].min())  # intercept 0: stored values are HU
    fill = min(-1024.0, genuine_min)
    assert (hu[padded] == fill).all()
    np.testing.assert_array_equal(hu[~padded], raw[~padded].astype(np.float32))
    assert float(hu.max()) == 1802.0


def test_rescale_and_padding_are_per_slice(data_root: Path, write_slice: SliceWriter) -> None:
    stored = np.array([[0, 10], [20, -2000]], dtype=np.int16)
    first = write_slice(data_root / "s" / "a.dcm", pixels=stored, slope=2.0, intercept=-1000.0)
    second = write_slice(
        data_root / "s" / "b.dcm",
        pixels=stored,
        slope=1.0,
        intercept=-1024.0,
        extra={"PixelPaddingValue": -2000},
    )

    np.testing.assert_array_equal(
        load_hu(ref_for(first), data_root), [[-1000, -980], [-960, -5000]]
    )
    # Padding -2000 stored becomes min(-1024, lowest genuine HU) = -1024.
    np.testing.assert_array_equal(
        load_hu(ref_for(second), data_root), [[-1024, -1014], [-1004, -1024]]
    )


def test_padding_fill_goes_below_air_when_the_image_does(
    data_root: Path, write_slice: SliceWriter
) -> None:
    stored = np.array([[-3000, 0], [5, 7]], dtype=np.int16)
    path = write_slice(
        data_root / "s" / "a.dcm", pixels=stored, intercept=0.0, extra={"PixelPaddingValue": 7}
    )
    np.testing.assert_array_equal(load_hu(ref_for(path), data_root), [[-3000, 0], [5, -3000]])


def test_multi_frame_is_unsupported(data_root: Path, write_slice: SliceWriter) -> None:
    path = write_slice(data_root / "s" / "mf.dcm", pixels=np.zeros((2, 4, 4), np.int16), frames=2)
    with pytest.raises(SeriesError, match="multi-frame"):
        load_hu(ref_for(path), data_root)


def test_undecodable_pixels_name_the_file(samples: Samples, data_root: Path) -> None:
    source = samples.root / samples.j2k / "1-06.dcm"
    data = bytearray(source.read_bytes())
    # Keep the header intact and scramble the JPEG 2000 codestream.
    start = data.index(b"\xff\x4f\xff\x51")  # SOC + SIZ markers
    data[start : start + 4000] = bytes(4000)
    target = data_root / "bad" / "scrambled.dcm"
    target.parent.mkdir()
    target.write_bytes(bytes(data))

    with pytest.raises(DicomReadError, match=r"bad/scrambled\.dcm"):
        load_hu(ref_for(target), data_root)


def test_pixels_cut_short_name_the_file(samples: Samples, data_root: Path) -> None:
    source = samples.root / samples.ge / "15.dcm"
    target = data_root / "cut" / "15.dcm"
    target.parent.mkdir()
    target.write_bytes(source.read_bytes()[:200_000])

    assert len(scan_series(data_root, "cut").slices) == 1  # the header is complete
    with pytest.raises(DicomReadError, match=r"cut/15\.dcm"):
        load_hu(ref_for(target), data_root)


# --- file window ------------------------------------------------------------------------------


def test_file_window_takes_the_first_of_multiple_values(samples: Samples) -> None:
    assert file_window(ref_for(samples.root / samples.j2k / "1-06.dcm"), samples.root) == (
        40.0,
        350.0,
    )
    assert file_window(ref_for(samples.root / samples.b70f / "1-15.dcm"), samples.root) == (
        -600.0,
        1200.0,
    )
    assert file_window(ref_for(samples.root / samples.ge / "14.dcm"), samples.root) == (35.0, 100.0)


def test_file_window_absent_is_none(data_root: Path, write_slice: SliceWriter) -> None:
    path = write_slice(data_root / "s" / "a.dcm")
    assert file_window(ref_for(path), data_root) is None
    zero = write_slice(data_root / "s" / "b.dcm", extra={"WindowCenter": 40, "WindowWidth": 0})
    assert file_window(ref_for(zero), data_root) is None


def test_file_window_drives_preprocessing(samples: Samples) -> None:
    ref = ref_for(samples.root / samples.b70f / "1-15.dcm")
    hu = load_hu(ref, samples.root)
    config = PreprocessConfig(window="file", input_size=(512, 512))

    window = resolve_window(config, file_window(ref, samples.root))
    out = preprocess_slice(hu, config, file_window(ref, samples.root))

    assert window == WindowSpec(center=-600, width=1200)
    np.testing.assert_allclose(out[..., 0], np.clip((hu + 1200) / 1200, 0, 1), atol=1e-6)
    with pytest.raises(SeriesError, match="no usable WindowCenter"):
        preprocess_slice(hu, config, None)


# --- windowing --------------------------------------------------------------------------------


def test_window_formula_on_known_values() -> None:
    hu = np.array([-1000, -160, -60, 40, 140, 240, 3000], dtype=np.float32)
    out = apply_window(hu, WindowSpec(center=40, width=400))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-7)


def test_window_keeps_shape_and_accepts_integers() -> None:
    hu = np.arange(-1024, 1024, dtype=np.int16).reshape(32, 64)
    out = apply_window(hu, WINDOW_PRESETS["lung"])
    assert out.shape == (32, 64)
    assert out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert np.all(np.diff(out.ravel()) >= 0)


@pytest.mark.parametrize(
    ("name", "center", "width"),
    [
        ("brain", 40, 80),
        ("abdomen", 40, 400),
        ("soft_tissue", 40, 400),
        ("lung", -600, 1500),
        ("bone", 400, 1800),
        ("mediastinum", 50, 350),
    ],
)
def test_presets(name: str, center: float, width: float) -> None:
    assert WINDOW_PRESETS[name] == WindowSpec(center=center, width=width)
    assert resolve_window(PreprocessConfig(window=name), None) == WINDOW_PRESETS[name]


def test_config_validation() -> None:
    assert PreprocessConfig().window == "soft_tissue"
    assert PreprocessConfig(window={"center": 1, "width": 2}).window == WindowSpec(
        center=1, width=2
    )
    with pytest.raises(ValidationError, match="unknown window"):
        PreprocessConfig(window="lungs")
    with pytest.raises(ValidationError):
        PreprocessConfig(window={"center": 1, "width": 0})
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"colour": True})
    with pytest.raises(ValidationError):
        PreprocessConfig(input_size=(0, 256))
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"normalise": "minmax"})
    with pytest.raises(ValidationError):
        WINDOW_PRESETS["brain"].center = 0  # type: ignore[misc]  # presets are frozen


# --- preprocess_slice -------------------------------------------------------------------------


def test_preprocess_slice_unit(samples: Samples) -> None:
    hu = load_hu(ref_for(samples.root / samples.j2k / "1-15.dcm"), samples.root)
    out = preprocess_slice(hu, PreprocessConfig())  # soft tissue: air and bone clip to 0 / 1
    assert out.shape == (256, 256, 1)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.05 < float(out.mean()) < 0.95
    lung = preprocess_slice(hu, PreprocessConfig(window="lung"))
    assert float(lung.min()) == pytest.approx((-1024 + 1350) / 1500, abs=1e-6)


def test_preprocess_slice_zscore_and_size(samples: Samples) -> None:
    hu = load_hu(ref_for(samples.root / samples.j2k / "1-15.dcm"), samples.root)
    out = preprocess_slice(hu, PreprocessConfig(input_size=(128, 96), normalise="zscore"))
    assert out.shape == (128, 96, 1)
    assert out.dtype == np.float32
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(out.std()) == pytest.approx(1.0, abs=1e-4)


def test_preprocess_slice_flat_zscore_is_zero() -> None:
    out = preprocess_slice(
        np.full((64, 64), -1024.0, dtype=np.float32), PreprocessConfig(normalise="zscore")
    )
    assert (out == 0).all()


def test_preprocess_slice_explicit_window() -> None:
    hu = np.linspace(-200, 200, 64 * 64, dtype=np.float32).reshape(64, 64)
    config = PreprocessConfig(window=WindowSpec(center=0, width=400), input_size=(64, 64))
    np.testing.assert_allclose(preprocess_slice(hu, config)[..., 0], (hu + 200) / 400, atol=1e-6)
    with pytest.raises(SeriesError, match="2-D"):
        preprocess_slice(hu[np.newaxis], config)
