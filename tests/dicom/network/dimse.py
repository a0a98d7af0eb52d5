"""Helpers for the receive-path tests (store, SCP, STOW-RS, gateway): small CT (or other) data
sets written with pydicom, STOW-RS multipart bodies, dcmtk command lines, raw PDUs."""

from __future__ import annotations

import socket
import struct
import subprocess
import uuid
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "dicom"
J2K_FOLDER = DATA_DIR / "tcia-lung-pet-ct-dx-A0002-chest-B40f-j2k"
B70F_FILE = DATA_DIR / "tcia-lung-pet-ct-dx-A0002-chest-B70f-original" / "1-15.dcm"
GE_FOLDER = DATA_DIR / "dcm_qa_ct-GE-head-tilt-original"
AE_TITLE = "FLASKMODEL"


def ct_dataset(
    *,
    sop_uid: str | None = None,
    series_uid: str = "1.2.826.0.1.3680043.10.1.1",
    study_uid: str = "1.2.826.0.1.3680043.10.1",
    sop_class: str = CTImageStorage,
    modality: str = "CT",
    pixels: np.ndarray | None = None,
) -> Dataset:
    """A small valid image data set with file meta (explicit VR little endian)."""
    array = np.arange(16, dtype=np.uint16).reshape(4, 4) if pixels is None else pixels
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "test series"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = array.astype("<u2").tobytes()
    return ds


def part10(ds: Dataset, *, keep_meta: bool = False) -> bytes:
    """The data set as a DICOM Part 10 file (preamble, file meta, data set); ``keep_meta``
    writes the file meta as set, even where it contradicts the data set."""
    out = BytesIO()
    if keep_meta:
        ds.preamble = b"\0" * 128
        ds.save_as(out, enforce_file_format=False)
    else:
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart(
    parts: Iterable[bytes], boundary: str = "", *, part_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """A STOW-RS body and its Content-Type: each part ``application/dicom``."""
    boundary = boundary or f"stow-{uuid.uuid4().hex}"
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        body += part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="application/dicom"; boundary={boundary}'


def sample_files() -> list[Path]:
    return sorted(J2K_FOLDER.glob("*.dcm"))


def dataset_bytes(path_or_data: Path | bytes) -> bytes:
    """The bytes after the file meta group: the data set exactly as encoded."""
    data = path_or_data.read_bytes() if isinstance(path_or_data, Path) else path_or_data
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return data[meta_end:]


def dcmtk(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def echoscu(port: int, *, calling: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", str(port))


def storescu(port: int, *args: str, calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", str(port), *args)


def client(port: int, *contexts: tuple[str, str], calling: str = "PYNETDICOM") -> Any:
    """A pynetdicom association to the SCP proposing ``(sop_class, transfer_syntax)`` contexts."""
    ae = AE(ae_title=calling)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    return ae.associate("127.0.0.1", port, ae_title=AE_TITLE)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def associate_rq(calling: str = "RAWPEER", called: str = AE_TITLE) -> bytes:
    """An encoded A-ASSOCIATE-RQ PDU proposing Verification."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context("1.2.840.10008.1.1")
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.10.99"
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def pdu(pdu_type: int, payload: bytes, *, declared: int | None = None) -> bytes:
    """A raw PDU: type, reserved byte, 4-byte length (``declared`` may lie), payload."""
    length = len(payload) if declared is None else declared
    return struct.pack(">BBI", pdu_type, 0, length) + payload
