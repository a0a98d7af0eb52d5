"""Compressed transfer syntaxes decode to exactly the pixels of their uncompressed originals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from flaskmodel.dicom.pixels import load_hu
from flaskmodel.dicom.series import scan_series

from .conftest import Samples


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=["jpeg2000", "rle"])
def test_compressed_copy_decodes_to_the_uncompressed_pixels(
    samples: Samples, data_root: Path, syntax: pydicom.uid.UID
) -> None:
    original = samples.files(samples.b70f)[0]
    plain = data_root / "plain"
    packed = data_root / "packed"
    plain.mkdir()
    packed.mkdir()
    shutil.copy(original, plain / "a.dcm")
    ds = pydicom.dcmread(original)
    ds.compress(syntax)
    ds.save_as(packed / "a.dcm", enforce_file_format=True)
    assert pydicom.dcmread(packed / "a.dcm").file_meta.TransferSyntaxUID == syntax

    [ref_plain] = scan_series(data_root, "plain").slices
    [ref_packed] = scan_series(data_root, "packed").slices
    np.testing.assert_array_equal(load_hu(ref_packed, data_root), load_hu(ref_plain, data_root))


def test_j2k_sample_round_trips_through_an_uncompressed_copy(
    samples: Samples, data_root: Path
) -> None:
    source = samples.files(samples.j2k)[9]
    (data_root / "j2k").mkdir()
    (data_root / "raw").mkdir()
    shutil.copy(source, data_root / "j2k" / "a.dcm")
    ds = pydicom.dcmread(source)
    ds.decompress()
    ds.save_as(data_root / "raw" / "a.dcm", enforce_file_format=True)
    [ref_j2k] = scan_series(data_root, "j2k").slices
    [ref_raw] = scan_series(data_root, "raw").slices
    np.testing.assert_array_equal(load_hu(ref_j2k, data_root), load_hu(ref_raw, data_root))
