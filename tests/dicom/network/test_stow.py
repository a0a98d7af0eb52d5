"""STOW-RS request bodies parsed and stored without HTTP: the answers PS3.18 asks for, the
request errors, and a body streamed through, never held in memory."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.uid import CTImageStorage, MRImageStorage

from flaskmodel.dicom.network.store import InstanceStore, StoredInstance
from flaskmodel.dicom.network.stow import receive_stow, stow_boundary
from flaskmodel.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from tests.dicom.network.dimse import ct_dataset, multipart, part10, sample_files

LIMIT = 64 * 1024 * 1024


class Trickle(io.RawIOBase):
    """A body that arrives a few bytes per read, as a slow client sends it."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        chunk = bytes(self._data[self.consumed : self.consumed + n])
        self.consumed += len(chunk)
        return chunk


class Endless(io.RawIOBase):
    """A body that never ends (a client streaming past any limit); counts what was read."""

    def __init__(self, head: bytes) -> None:
        self._head = head
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 65536 if size < 0 else size
        chunk = self._head[:size] if self.consumed == 0 else b"\0" * size
        self.consumed += len(chunk)
        return chunk


@pytest.fixture
def store(data_root: Path) -> InstanceStore:
    return InstanceStore(data_root)


def _stow(
    store: InstanceStore,
    body: bytes | io.RawIOBase,
    content_type: str | None,
    *,
    received: list[StoredInstance] | None = None,
    limit: int = LIMIT,
    study_uid: str | None = None,
    declared: int | None = None,
) -> Any:
    stream = io.BytesIO(body) if isinstance(body, bytes) else body
    return receive_stow(
        stream,  # type: ignore[arg-type]
        content_type=content_type,
        content_length=declared,
        store=store,
        on_stored=(received if received is not None else []).append,
        max_bytes=limit,
        study_uid=study_uid,
    )


def _sequence(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def test_every_part_stored_is_200_with_a_referenced_sop_sequence(store: InstanceStore) -> None:
    files = sample_files()
    body, content_type = multipart(p.read_bytes() for p in files)
    received: list[StoredInstance] = []
    result = _stow(store, body, content_type, received=received)
    assert result.status == 200
    referenced = _sequence(result.body, "00081199")
    assert len(referenced) == 20
    assert "00081198" not in result.body
    for sample, item, stored in zip(files, referenced, received, strict=True):
        header = pydicom.dcmread(sample, stop_before_pixels=True)
        assert item["00081150"] == {"vr": "UI", "Value": [CTImageStorage]}
        assert item["00081155"] == {"vr": "UI", "Value": [header.SOPInstanceUID]}
        assert stored.calling_ae_title == "STOW-RS"
        assert stored.path.read_bytes() == sample.read_bytes()  # the part, byte for byte
    assert list(store.incoming.iterdir()) == []


def test_some_failed_is_202_with_failure_reasons(store: InstanceStore) -> None:
    good = part10(ct_dataset())
    mr = ct_dataset(sop_class=MRImageStorage, modality="MR")
    body, content_type = multipart([good, part10(mr), b"not dicom"])
    result = _stow(store, body, content_type)
    assert result.status == 202
    assert len(_sequence(result.body, "00081199")) == 1
    failed = _sequence(result.body, "00081198")
    assert [f["00081197"] for f in failed] == [
        {"vr": "US", "Value": [0x0122]},  # SOP class not supported
        {"vr": "US", "Value": [0xC000]},  # cannot understand
    ]
    assert failed[0]["00081155"]["Value"] == [mr.SOPInstanceUID]
    assert "Value" not in failed[1]["00081155"]  # unknown: empty
    assert len(list(store.root.glob("*/*.dcm"))) == 1


def test_none_stored_is_409(store: InstanceStore) -> None:
    body, content_type = multipart([b"garbage"])
    result = _stow(store, body, content_type)
    assert result.status == 409
    assert "00081199" not in result.body
    assert list(store.root.glob("*/*")) == []


def test_a_duplicate_is_stored_and_a_conflict_is_409(store: InstanceStore) -> None:
    ds = ct_dataset()
    body, content_type = multipart([part10(ds)])
    received: list[StoredInstance] = []
    assert _stow(store, body, content_type, received=received).status == 200
    assert _stow(store, body, content_type, received=received).status == 200
    assert [r.duplicate for r in received] == [False, True]
    other = ct_dataset(sop_uid=ds.SOPInstanceUID, pixels=np.ones((4, 4), np.uint16))
    body, content_type = multipart([part10(other)])
    result = _stow(store, body, content_type)
    assert result.status == 409
    assert _sequence(result.body, "00081198")[0]["00081197"]["Value"] == [0x0111]
    assert pydicom.dcmread(received[0].path).PixelData == ds.PixelData


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_a_path_traversing_uid_fails_and_nothing_is_written(
    store: InstanceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    before = sorted(tmp_path.rglob("*"))
    body, content_type = multipart([part10(ct_dataset(sop_uid="../../x"))])
    result = _stow(store, body, content_type)
    assert result.status == 409
    assert _sequence(result.body, "00081198")[0]["00081197"]["Value"] == [0xA900]
    assert sorted(tmp_path.rglob("*")) == before


def test_instances_of_another_study_than_the_target_fail(store: InstanceStore) -> None:
    body, content_type = multipart(
        [part10(ct_dataset(study_uid="1.2.3")), part10(ct_dataset(study_uid="1.2.4"))]
    )
    result = _stow(store, body, content_type, study_uid="1.2.3")
    assert result.status == 202
    assert _sequence(result.body, "00081198")[0]["00081197"]["Value"] == [0xA900]
    with pytest.raises(InvalidRequest, match="not a valid DICOM UID"):
        _stow(store, body, content_type, study_uid="../etc")


def test_a_failing_callback_fails_the_instance_so_the_client_retries(
    store: InstanceStore,
) -> None:
    def broken(stored: StoredInstance) -> None:
        raise ConnectionError("redis down")

    body, content_type = multipart([part10(ct_dataset())])
    result = receive_stow(
        io.BytesIO(body),
        content_type=content_type,
        content_length=len(body),
        store=store,
        on_stored=broken,
        max_bytes=LIMIT,
    )
    assert result.status == 409
    assert _sequence(result.body, "00081198")[0]["00081197"]["Value"] == [0x0110]
    assert len(list(store.root.glob("*/*.dcm"))) == 1  # durable; the retry is a duplicate


@pytest.mark.parametrize("step", [1, 7, 4099])
def test_a_body_in_small_reads_parses_the_same(store: InstanceStore, step: int) -> None:
    # Part data that looks like a delimiter's beginning must stay data.
    tricky = part10(ct_dataset()) + b"\r\n--boundar\r\n--"
    body, content_type = multipart([tricky, part10(ct_dataset())], boundary="boundary")
    received: list[StoredInstance] = []
    result = _stow(store, Trickle(body, step), content_type, received=received)
    assert result.status == 200
    assert received[0].path.read_bytes() == tricky


def test_preamble_epilogue_and_transport_padding_are_allowed(store: InstanceStore) -> None:
    data = part10(ct_dataset())
    body = (
        b"this is a preamble\r\n--b  \t\r\ncontent-type: application/dicom\r\n\r\n"
        + data
        + b"\r\n--b--\r\nand an epilogue"
    )
    result = _stow(store, body, 'multipart/related; type="application/dicom"; boundary="b"')
    assert result.status == 200


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/dicom",
        "multipart/form-data; boundary=x",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "application/json",
    ],
)
def test_wrong_content_types_are_415(store: InstanceStore, content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        _stow(store, b"--x--", content_type)


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (b"--x--", 'multipart/related; type="application/dicom"', "no boundary"),
        (b"--x--", "multipart/related; boundary=" + "b" * 71, "1-70"),
        (b"no delimiter at all", "multipart/related; boundary=x", "not multipart"),
        (b"--x--\r\n", "multipart/related; boundary=x", "no part"),
        (b"--x\r\n\r\nDICM...", "multipart/related; boundary=x", "ends inside a part"),
        (b"--x\r\nContent-Type: appl", "multipart/related; boundary=x", "inside part headers"),
        (b"--xjunk\r\n\r\n", "multipart/related; boundary=x", "boundary line"),
    ],
)
def test_malformed_multipart_is_400(
    store: InstanceStore, body: bytes, content_type: str, match: str
) -> None:
    with pytest.raises(InvalidRequest, match=match):
        _stow(store, body, content_type)
    assert list(store.incoming.iterdir()) == []


def test_a_part_of_another_type_fails(store: InstanceStore) -> None:
    body, content_type = multipart([b'{"00100010": {}}'], part_type="application/dicom+json")
    result = _stow(store, body, content_type)
    assert result.status == 409
    assert _sequence(result.body, "00081198")[0]["00081197"]["Value"] == [0xC000]


def test_a_declared_length_over_the_limit_is_413_before_reading(store: InstanceStore) -> None:
    stream = Endless(b"")
    with pytest.raises(PayloadTooLarge, match="larger than the limit of 1048576 bytes"):
        _stow(store, stream, "multipart/related; boundary=x", limit=2**20, declared=2**31)
    assert stream.consumed == 0


def test_a_streamed_body_over_the_limit_is_413_and_reading_stops(store: InstanceStore) -> None:
    head = b"--x\r\nContent-Type: application/dicom\r\n\r\n"
    stream = Endless(head)
    with pytest.raises(PayloadTooLarge):
        _stow(store, stream, "multipart/related; boundary=x", limit=2**20)
    assert stream.consumed <= 2**20 + 65536
    assert list(store.incoming.iterdir()) == []
    assert list(store.root.glob("*/*")) == []


def test_a_large_body_is_streamed_not_held_in_memory(store: InstanceStore, tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 4000, (2048, 4096), dtype=np.uint16)  # 16 MiB
    big = part10(ct_dataset(pixels=pixels))
    body, content_type = multipart([big, part10(ct_dataset())])
    spooled = tmp_path / "body"
    spooled.write_bytes(body)
    del big, body, pixels
    tracemalloc.start()
    try:
        with spooled.open("rb") as stream:
            result = _stow(store, stream, content_type)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == 200
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while reading a 16 MiB body"


def test_boundary_parsing() -> None:
    assert stow_boundary('multipart/related; type="application/dicom"; boundary="a b"') == b"a b"
    assert stow_boundary("Multipart/Related; boundary=xyz; type=Application/DICOM") == b"xyz"
