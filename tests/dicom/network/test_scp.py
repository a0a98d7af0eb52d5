"""The Storage SCP against real senders: dcmtk's storescu/echoscu, pynetdicom where dcmtk cannot
do the bad thing, and raw sockets for broken PDUs."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from flaskmodel.dicom.network.scp import StorageScp, host_allowed, parse_networks, start_scp
from flaskmodel.dicom.network.store import InstanceStore, StoredInstance
from flaskmodel.settings.dicom import DicomSettings
from tests.dicom.network.dimse import (
    B70F_FILE,
    GE_FOLDER,
    J2K_FOLDER,
    associate_rq,
    client,
    connect,
    ct_dataset,
    dataset_bytes,
    echoscu,
    part10,
    pdu,
    read_until_closed,
    sample_files,
    storescu,
)

ABORT_PDU = 0x07
ACCEPT_PDU = 0x02


@dataclass
class Running:
    scp: StorageScp
    store: InstanceStore
    received: list[StoredInstance] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.scp.port


Start = Callable[..., Running]


@pytest.fixture
def start(data_root: Path) -> Iterator[Start]:
    """Start an SCP on a free port (settings by keyword), all stopped after the test."""
    running: list[Running] = []

    def start(on_stored: Callable[[StoredInstance], None] | None = None, **fields: Any) -> Running:
        store = InstanceStore(data_root)
        received: list[StoredInstance] = []
        scp = start_scp(DicomSettings(port=0, **fields), store, on_stored or received.append)
        running.append(Running(scp, store, received))
        return running[-1]

    yield start
    for item in running:
        item.scp.stop()


@pytest.fixture
def scp(start: Start) -> Running:
    return start()


def test_echoscu_is_answered(scp: Running) -> None:
    result = echoscu(scp.port)
    assert result.returncode == 0, result.stderr


def test_storescu_sends_the_jpeg2000_series_and_it_is_stored_as_sent(scp: Running) -> None:
    result = storescu(scp.port, "-xv", "+sd", str(J2K_FOLDER))
    assert result.returncode == 0, result.stderr
    assert len(scp.received) == 20
    assert {r.calling_ae_title for r in scp.received} == {"STORESCU"}
    assert not any(r.duplicate for r in scp.received)
    for sample in sample_files():
        sent = pydicom.dcmread(sample)
        stored_path = scp.store.root / sent.SeriesInstanceUID / f"{sent.SOPInstanceUID}.dcm"
        stored = pydicom.dcmread(stored_path)
        assert stored.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert stored == sent
        assert stored.PixelData == sent.PixelData  # the JPEG 2000 stream as sent, not re-encoded
    assert {p.parent.name for p in scp.store.root.glob("*/*.dcm")} == {
        pydicom.dcmread(sample_files()[0], stop_before_pixels=True).SeriesInstanceUID
    }


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The B70f slice in each compressed transfer syntax, made by dcmtk (and pydicom for lossy
    JPEG 2000)."""
    folder = tmp_path_factory.mktemp("encoded")
    made = {}
    tools = {
        JPEGBaseline8Bit: ["dcmcjpeg", "+eb"],
        JPEGExtended12Bit: ["dcmcjpeg", "+ee"],
        JPEGLossless: ["dcmcjpeg", "+el"],
        JPEGLosslessSV1: ["dcmcjpeg", "+e1"],
        JPEGLSLossless: ["dcmcjpls", "+el"],
        JPEGLSNearLossless: ["dcmcjpls", "+en"],
        RLELossless: ["dcmcrle"],
    }
    for syntax, tool in tools.items():
        out = folder / f"{syntax}.dcm"
        subprocess.run([*tool, str(B70F_FILE), str(out)], check=True, capture_output=True)
        made[syntax] = out
    ds = pydicom.dcmread(B70F_FILE)
    ds.compress(JPEG2000, j2k_cr=[20], generate_instance_uid=False)
    made[JPEG2000] = folder / "j2k-lossy.dcm"
    ds.save_as(made[JPEG2000], enforce_file_format=True)
    return made


# storescu's option proposing each syntax; uncompressed ones it converts the file to on the fly.
STORESCU_OPTIONS = [
    (ImplicitVRLittleEndian, "-xi"),
    (ExplicitVRLittleEndian, "-xe"),
    (ExplicitVRBigEndian, "-xb"),
    (DeflatedExplicitVRLittleEndian, "-xd"),
    (JPEGBaseline8Bit, "-xy"),
    (JPEGExtended12Bit, "-xx"),
    (JPEGLosslessSV1, "-xs"),
    (JPEGLSLossless, "-xt"),
    (JPEGLSNearLossless, "-xu"),
    (RLELossless, "-xr"),
    (JPEG2000, "-xw"),
]
LOSSLESS = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
            RLELossless}  # fmt: skip


@pytest.mark.parametrize(("syntax", "option"), STORESCU_OPTIONS, ids=str)
def test_every_decodable_transfer_syntax_is_accepted_and_kept(
    scp: Running, encoded: dict[str, Path], syntax: str, option: str
) -> None:
    source = encoded.get(syntax, B70F_FILE)
    result = storescu(scp.port, option, str(source))
    assert result.returncode == 0, result.stderr
    [stored] = scp.received
    assert stored.transfer_syntax_uid == syntax
    written = pydicom.dcmread(stored.path)
    assert written.file_meta.TransferSyntaxUID == syntax
    if syntax in encoded:  # compressed: the same stream as in the file
        assert written.PixelData == pydicom.dcmread(source).PixelData
    original = pydicom.dcmread(B70F_FILE).pixel_array
    if syntax in LOSSLESS:
        assert np.array_equal(written.pixel_array, original)
    else:
        assert written.pixel_array.shape == original.shape


def test_the_bytes_received_are_the_bytes_stored(scp: Running) -> None:
    """dcmtk re-encodes a data set when it sends it (explicit sequence lengths); pynetdicom sends a
    file's data set bytes unchanged, so the stored file must hold those very bytes."""
    assoc = client(scp.port, (CTImageStorage, JPEG2000Lossless))
    statuses = [assoc.send_c_store(path).Status for path in sample_files()]
    assoc.release()
    assert statuses == [0x0000] * 20
    for sample, stored in zip(sample_files(), scp.received, strict=True):
        assert dataset_bytes(stored.path) == dataset_bytes(sample)
        assert stored.calling_ae_title == "PYNETDICOM"


def test_jpeg_lossless_process_14_from_pynetdicom(scp: Running, encoded: dict[str, Path]) -> None:
    assoc = client(scp.port, (CTImageStorage, JPEGLossless))
    assert assoc.is_established
    status = assoc.send_c_store(encoded[JPEGLossless])  # a path: sent without decoding
    assoc.release()
    assert status.Status == 0x0000
    [stored] = scp.received
    assert stored.transfer_syntax_uid == JPEGLossless
    assert dataset_bytes(stored.path) == dataset_bytes(encoded[JPEGLossless])


def test_other_sop_classes_are_refused_by_their_presentation_context(scp: Running) -> None:
    assoc = client(
        scp.port,
        (MRImageStorage, ExplicitVRLittleEndian),
        (SecondaryCaptureImageStorage, ExplicitVRLittleEndian),
        (CTImageStorage, ExplicitVRLittleEndian),
    )
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    rejected = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
    assoc.release()
    assert accepted == {CTImageStorage}
    # 0x03: abstract syntax not supported (provider rejection).
    assert rejected == {MRImageStorage: 0x03, SecondaryCaptureImageStorage: 0x03}


def test_storescu_cannot_send_an_mr_image(scp: Running, tmp_path: Path) -> None:
    mr = tmp_path / "mr.dcm"
    mr.write_bytes(part10(ct_dataset(sop_class=MRImageStorage, modality="MR")))
    result = storescu(scp.port, str(mr))
    assert result.returncode != 0
    assert "No presentation context" in result.stderr
    assert scp.received == []
    assert list(scp.store.root.glob("*/*")) == []


def test_a_calling_ae_title_not_allowed_is_rejected(start: Start) -> None:
    scp = start(allowed_ae_titles=["CT_SCANNER"])
    assoc = client(scp.port, (CTImageStorage, ExplicitVRLittleEndian), calling="INTRUDER")
    assert assoc.is_rejected
    answer = assoc.acceptor.primitive
    # Rejected permanent, by the service user, calling AE title not recognised.
    assert (answer.result, answer.result_source, answer.diagnostic) == (0x01, 0x01, 0x03)
    refused = echoscu(scp.port, calling="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert echoscu(scp.port, calling="CT_SCANNER").returncode == 0


def test_a_host_not_allowed_is_rejected_and_the_server_keeps_serving(start: Start) -> None:
    scp = start(allowed_hosts=["10.0.0.0/8", "192.168.1.7"])
    for _ in range(2):
        assoc = client(scp.port, (CTImageStorage, ExplicitVRLittleEndian))
        assert assoc.is_rejected
        answer = assoc.acceptor.primitive
        assert (answer.result, answer.result_source, answer.diagnostic) == (0x01, 0x01, 0x01)
    assert echoscu(scp.port).returncode != 0
    assert scp.received == []
    allowed = start(allowed_hosts=["127.0.0.0/8"])
    assert echoscu(allowed.port).returncode == 0


def test_host_allow_list_matching() -> None:
    networks = parse_networks(["10.1.0.0/16", "192.168.1.7", "::1"])
    assert host_allowed("10.1.2.3", networks)
    assert host_allowed("::ffff:10.1.2.3", networks)
    assert host_allowed("192.168.1.7", networks)
    assert host_allowed("::1", networks)
    assert not host_allowed("10.2.0.1", networks)
    assert not host_allowed("192.168.1.8", networks)
    assert not host_allowed("not-an-address", networks)
    assert host_allowed("10.2.0.1", ())
    with pytest.raises(ValueError, match="allowed_hosts"):
        parse_networks(["10.0.0.0/33"])


def test_garbage_p_data_aborts_that_association_only(scp: Running) -> None:
    with connect(scp.port) as sock:
        sock.sendall(associate_rq())
        assert sock.recv(65536)[0] == ACCEPT_PDU
        sock.sendall(pdu(0x04, b"\xff" * 20))  # P-DATA-TF whose item lengths make no sense
        answer = read_until_closed(sock)
    assert answer[0] == ABORT_PDU
    assert echoscu(scp.port).returncode == 0


@pytest.mark.parametrize(
    "sent",
    [
        pdu(0x01, associate_rq()[6:40], declared=len(associate_rq()) - 6),  # truncated RQ
        pdu(0x01, b"\x00\x01", declared=2**31),  # a 2 GiB PDU that never comes
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not DICOM at all
        pdu(0x09, b"\x00" * 8),  # an unknown PDU type
    ],
    ids=["truncated-rq", "huge-declared", "http", "unknown-type"],
)
def test_broken_connections_leave_the_server_serving(scp: Running, sent: bytes) -> None:
    with connect(scp.port) as sock:
        sock.sendall(sent)
        sock.shutdown(socket.SHUT_WR)
        read_until_closed(sock)
    assert echoscu(scp.port).returncode == 0
    assert storescu(scp.port, str(B70F_FILE)).returncode == 0
    assert len(scp.received) == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
@pytest.mark.parametrize("sop_uid", ["../../x", "1.2/../../../../tmp/evil"])
def test_a_path_traversing_sop_uid_is_refused(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sop_uid: str
) -> None:
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    before = sorted(tmp_path.rglob("*"))
    assoc = client(scp.port, (CTImageStorage, ExplicitVRLittleEndian))
    status = assoc.send_c_store(ct_dataset(sop_uid=sop_uid))
    assoc.release()
    assert status.Status == 0xA900
    assert "SOPInstanceUID" in status.ErrorComment
    assert sorted(tmp_path.rglob("*")) == before
    assert scp.received == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_storescu_with_a_path_traversing_sop_uid_is_refused(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    evil = tmp_path / "sent" / "evil.dcm"
    evil.parent.mkdir()
    evil.write_bytes(part10(ct_dataset(sop_uid="../../../x")))
    result = storescu(scp.port, "-v", str(evil))
    assert result.returncode != 0
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr
    assert not any(p.suffix == ".dcm" for p in scp.store.root.rglob("*"))
    assert not (tmp_path / "x.dcm").exists()


def test_the_same_instance_twice_is_success_and_a_duplicate(scp: Running) -> None:
    ge = sorted(GE_FOLDER.glob("*.dcm"))[0]
    result = storescu(scp.port, str(ge), str(ge))
    assert result.returncode == 0, result.stderr
    assert [r.duplicate for r in scp.received] == [False, True]
    assert len(list(scp.store.root.glob("*/*.dcm"))) == 1


def test_other_pixels_under_a_stored_sop_uid_are_refused(scp: Running) -> None:
    first = ct_dataset()
    second = ct_dataset(sop_uid=first.SOPInstanceUID, pixels=np.ones((4, 4), np.uint16))
    assoc = client(scp.port, (CTImageStorage, ExplicitVRLittleEndian))
    statuses = [assoc.send_c_store(first).Status, assoc.send_c_store(second).Status]
    assoc.release()
    assert statuses == [0x0000, 0x0111]
    [stored] = scp.received
    assert np.array_equal(pydicom.dcmread(stored.path).pixel_array, first.pixel_array)


def test_a_failing_callback_makes_the_sender_retry_and_the_retry_is_a_duplicate(
    start: Start,
) -> None:
    calls: list[StoredInstance] = []

    def flaky(stored: StoredInstance) -> None:
        calls.append(stored)
        if len(calls) == 1:
            raise ConnectionError("tracking store unavailable")

    scp = start(on_stored=flaky)
    ds = ct_dataset()
    assoc = client(scp.port, (CTImageStorage, ExplicitVRLittleEndian))
    statuses = [assoc.send_c_store(ds).Status, assoc.send_c_store(ds).Status]
    assoc.release()
    assert statuses == [0x0110, 0x0000]
    assert [c.duplicate for c in calls] == [False, True]
    assert calls[0].path.exists()


def test_max_pdu_comes_from_settings(start: Start) -> None:
    scp = start(max_pdu_bytes=65536)
    assoc = client(scp.port, (CTImageStorage, ExplicitVRLittleEndian))
    assert assoc.acceptor.maximum_length == 65536
    assoc.release()


def test_stop_closes_the_port(start: Start) -> None:
    scp = start()
    scp.scp.stop()
    with pytest.raises(ConnectionRefusedError):
        connect(scp.port).close()
