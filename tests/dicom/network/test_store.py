"""The instance store: layout, durability rules, duplicates, conflicts and refused input."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from flaskmodel.dicom.network.store import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    InstanceStore,
    decodable_transfer_syntaxes,
)
from flaskmodel.errors import InstanceRefused
from tests.dicom.network.dimse import B70F_FILE, ct_dataset, part10, sample_files


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(data_root: Path) -> InstanceStore:
    return InstanceStore(data_root)


def test_decodable_transfer_syntaxes_cover_the_standard_ones() -> None:
    found = set(decodable_transfer_syntaxes())
    expected = {
        ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless,
        RLELossless,
    }  # fmt: skip
    assert expected <= found


def test_a_received_file_lands_under_series_and_sop_uid_as_sent(store: InstanceStore) -> None:
    source = sample_files()[0]
    data = source.read_bytes()
    stored = store.store_bytes(data, source="MODALITY")
    header = pydicom.dcmread(source, stop_before_pixels=True)
    expected = store.root / header.SeriesInstanceUID / f"{header.SOPInstanceUID}.dcm"
    assert stored.path == expected
    assert expected.read_bytes() == data  # Part 10 as received: no re-encoding
    assert stored.transfer_syntax_uid == JPEG2000Lossless
    assert (stored.study_instance_uid, stored.series_instance_uid, stored.sop_instance_uid) == (
        header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID,
    )  # fmt: skip
    assert stored.sop_class_uid == header.SOPClassUID
    assert stored.modality == "CT"
    assert stored.series_description == str(header.SeriesDescription)
    assert stored.calling_ae_title == "MODALITY"
    assert not stored.duplicate
    assert abs(stored.received_at - time.time()) < 60
    assert _files(store.root) == [expected]  # nothing left in .incoming


def test_the_same_bytes_twice_are_one_file_and_a_duplicate(store: InstanceStore) -> None:
    data = part10(ct_dataset())
    first = store.store_bytes(data, source="A")
    second = store.store_bytes(data, source="B")
    assert not first.duplicate
    assert second.duplicate
    assert second.path == first.path
    assert _files(store.root) == [first.path]


def test_the_same_data_set_with_other_file_meta_is_a_duplicate(store: InstanceStore) -> None:
    ds = ct_dataset()
    first = store.store_bytes(part10(ds), source="A")
    ds.file_meta.ImplementationVersionName = "OTHER_SENDER"
    again = store.store_bytes(part10(ds), source="STOW-RS")
    assert again.duplicate
    assert first.path.read_bytes() != part10(ds)


def test_the_same_instance_in_another_transfer_syntax_is_a_duplicate(
    store: InstanceStore,
) -> None:
    original = B70F_FILE.read_bytes()
    first = store.store_bytes(original, source="A")
    ds = pydicom.dcmread(B70F_FILE)
    ds.compress(RLELossless, generate_instance_uid=False)
    again = store.store_bytes(part10(ds), source="B")
    assert again.duplicate
    assert first.path.read_bytes() == original


def test_other_pixels_under_a_stored_sop_uid_are_refused_and_the_first_file_kept(
    store: InstanceStore,
) -> None:
    first = ct_dataset()
    stored = store.store_bytes(part10(first), source="A")
    before = stored.path.read_bytes()
    changed = ct_dataset(sop_uid=first.SOPInstanceUID, pixels=np.ones((4, 4), np.uint16))
    with pytest.raises(InstanceRefused) as refused:
        store.store_bytes(part10(changed), source="B")
    assert refused.value.dicom_status == DUPLICATE_SOP_INSTANCE
    assert refused.value.sop_instance_uid == first.SOPInstanceUID
    assert "already stored" in refused.value.message
    assert stored.path.read_bytes() == before
    assert _files(store.root) == [stored.path]


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "../../x"),
        ("SOPInstanceUID", "a/b"),
        ("SOPInstanceUID", "1.2.3/../../../etc"),
        ("SeriesInstanceUID", "../../etc"),
        ("SeriesInstanceUID", "/tmp"),
        ("SeriesInstanceUID", "1" * 65),
        ("StudyInstanceUID", ""),
        ("SOPInstanceUID", "1..2"),
    ],
)
def test_invalid_uids_are_refused_before_any_path_is_built(
    store: InstanceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keyword: str, value: str
) -> None:
    # pydicom lets a sender write these (here without even warning).
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    ds = ct_dataset()
    setattr(ds, keyword, value)
    if keyword == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = value
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(InstanceRefused) as refused:
        store.store_bytes(part10(ds), source="EVIL")
    assert refused.value.dicom_status == DOES_NOT_MATCH
    assert keyword in refused.value.message
    assert sorted(tmp_path.rglob("*")) == before  # nothing anywhere, inside or outside the root


def test_a_data_set_that_is_not_the_one_the_request_named_is_refused(
    store: InstanceStore,
) -> None:
    ds = ct_dataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"  # what the C-STORE request said
    with pytest.raises(InstanceRefused) as refused:
        store.store_bytes(part10(ds, keep_meta=True), source="A")
    assert refused.value.dicom_status == DOES_NOT_MATCH
    assert _files(store.root) == []


@pytest.mark.parametrize("data", [b"", b"garbage" * 100, b"\0" * 128 + b"DICM" + b"\xff" * 50])
def test_bytes_that_are_not_dicom_are_refused(store: InstanceStore, data: bytes) -> None:
    with pytest.raises(InstanceRefused) as refused:
        store.store_bytes(data, source="A")
    assert refused.value.dicom_status == CANNOT_UNDERSTAND
    assert "not a DICOM Part 10 file" in refused.value.message
    assert _files(store.root) == []


@pytest.mark.parametrize("sop_class", [MRImageStorage, SecondaryCaptureImageStorage])
def test_other_sop_classes_than_ct_are_refused(store: InstanceStore, sop_class: str) -> None:
    with pytest.raises(InstanceRefused) as refused:
        store.store_bytes(part10(ct_dataset(sop_class=sop_class, modality="MR")), source="A")
    assert refused.value.dicom_status == SOP_CLASS_NOT_SUPPORTED
    assert _files(store.root) == []


def test_a_transfer_syntax_outside_the_accepted_ones_is_refused(data_root: Path) -> None:
    store = InstanceStore(data_root, transfer_syntaxes=[ExplicitVRLittleEndian])
    with pytest.raises(InstanceRefused) as refused:
        store.store_bytes(sample_files()[0].read_bytes(), source="A")
    assert refused.value.dicom_status == TRANSFER_SYNTAX_NOT_SUPPORTED


def test_a_spooled_file_of_another_study_is_refused_and_removed(store: InstanceStore) -> None:
    path, out = store.new_spool()
    with out:
        out.write(part10(ct_dataset(study_uid="1.2.3")))
    with pytest.raises(InstanceRefused) as refused:
        store.store_file(path, source="STOW-RS", expected_study="1.2.4")
    assert refused.value.dicom_status == DOES_NOT_MATCH
    assert "target study 1.2.4" in refused.value.message
    assert not path.exists()
    assert _files(store.root) == []


def test_a_spooled_file_is_moved_into_place(store: InstanceStore) -> None:
    data = part10(ct_dataset(study_uid="1.2.3"))
    path, out = store.new_spool()
    with out:
        out.write(data)
    stored = store.store_file(path, source="STOW-RS", expected_study="1.2.3")
    assert stored.path.read_bytes() == data
    assert stored.calling_ae_title == "STOW-RS"
    assert not path.exists()
    assert os.stat(stored.path).st_nlink == 1


def test_a_write_failure_is_out_of_resources(store: InstanceStore) -> None:
    ds = ct_dataset()
    (store.root / ds.SeriesInstanceUID).write_text("a file where the series folder should be")
    with pytest.raises(InstanceRefused) as refused:
        store.store_bytes(part10(ds), source="A")
    assert refused.value.dicom_status == OUT_OF_RESOURCES
    assert list(store.incoming.iterdir()) == []


def test_concurrent_stores_of_one_instance_write_it_once(store: InstanceStore) -> None:
    data = part10(ct_dataset())
    results = []
    barrier = threading.Barrier(8)

    def send() -> None:
        barrier.wait()
        results.append(store.store_bytes(data, source="A"))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.duplicate for r in results) == [False] + [True] * 7
    assert len(_files(store.root)) == 1


def test_sweep_removes_only_stale_spooled_files(store: InstanceStore) -> None:
    old, out = store.new_spool()
    out.close()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh, out = store.new_spool()
    out.close()
    assert store.sweep_incoming(older_than_seconds=3600) == 1
    assert not old.exists()
    assert fresh.exists()
