"""STOW-RS (PS3.18 10.5, Store Instances): the DICOMweb half of the front door, without HTTP.

Owns ``receive_stow``: it reads a ``multipart/related; type="application/dicom"`` request body
as a stream, spools each part to its own file under ``<data_root>/.incoming/`` (the body is
never held in memory, whatever its size), stores each through the ``InstanceStore``, calls
``on_stored`` for each stored instance (duplicates included), and builds the DICOM JSON answer:

- ``00081199`` ReferencedSOPSequence: one item (``00081150`` class, ``00081155`` instance) per
  instance stored or already stored with the same content;
- ``00081198`` FailedSOPSequence: one item per refused part with ``00081197`` FailureReason, the
  ``InstanceRefused`` status (table in ``flaskmodel.dicom.network.store``; 0x0110 when
  ``on_stored`` failed, so the client retries); UIDs are empty when the part did not parse;
- HTTP status 200 when every part was stored, 202 when some failed, 409 when none was stored.

No RetrieveURL is returned: this service stores, it does not serve WADO-RS.

Request errors raise (the HTTP layer maps them to JSON errors): ``UnsupportedMediaType`` (415)
for a content type other than multipart/related or a ``type`` parameter other than
application/dicom; ``InvalidRequest`` (400) for a missing or invalid boundary, a body that is not
valid multipart or holds no part, or an invalid target study UID; ``PayloadTooLarge`` (413) for
a body (declared or read) over ``max_bytes``. Parts before a framing error stay stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO, Any

from pydicom.dataset import Dataset

from flaskmodel.dicom.network.store import (
    STOW_SOURCE,
    InstanceStore,
    OnStored,
    StoredInstance,
    is_valid_uid,
)
from flaskmodel.errors import (
    InstanceRefused,
    InvalidRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)

PROCESSING_FAILURE = 0x0110
DICOM_MEDIA_TYPE = "application/dicom"
DICOM_JSON_MEDIA_TYPE = "application/dicom+json"

_CHUNK = 1 << 16
# RFC 2046: a boundary is 1-70 characters; part headers and delimiter lines are short.
_MAX_BOUNDARY = 70
_MAX_PART_HEADERS = 16 * 1024
_MAX_DELIMITER_LINE = 1024


@dataclass(frozen=True)
class FailedInstance:
    """A part that was not stored: its UIDs when it parsed ("" otherwise) and the reason."""

    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int
    message: str


@dataclass
class StowResult:
    """The answer to one STOW-RS request: HTTP status, DICOM JSON body, what happened."""

    status: int
    body: dict[str, Any]
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)


def stow_boundary(content_type: str | None) -> bytes:
    """The multipart boundary of a STOW-RS request's Content-Type, or the 415/400 error."""
    if not content_type:
        raise UnsupportedMediaType(
            'STOW-RS needs Content-Type: multipart/related; type="application/dicom"'
        )
    header = Message()
    header["content-type"] = content_type
    if header.get_content_type() != "multipart/related":
        raise UnsupportedMediaType(
            f"content type {header.get_content_type()!r} is not supported; STOW-RS takes "
            'multipart/related; type="application/dicom"'
        )
    part_type = header.get_param("type")
    if isinstance(part_type, str) and part_type.strip().lower() != DICOM_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f"multipart/related type {part_type!r} is not supported; only application/dicom "
            "(DICOM Part 10 files) is"
        )
    boundary = header.get_boundary()
    if not boundary:
        raise InvalidRequest("multipart/related content type has no boundary parameter")
    if len(boundary) > _MAX_BOUNDARY or not boundary.isascii():
        raise InvalidRequest("multipart boundary must be 1-70 ASCII characters")
    return boundary.encode("ascii")


def receive_stow(
    stream: IO[bytes],
    *,
    content_type: str | None,
    content_length: int | None,
    store: InstanceStore,
    on_stored: OnStored,
    max_bytes: int,
    study_uid: str | None = None,
) -> StowResult:
    """Read one STOW-RS request body from ``stream`` and store its instances (see module doc).
    ``study_uid`` is the target of ``POST .../studies/<uid>``: instances of another study fail
    with 0xA900."""
    if content_length is not None and content_length > max_bytes:
        raise PayloadTooLarge(
            f"request body is larger than the limit of {max_bytes} bytes ({content_length})"
        )
    boundary = stow_boundary(content_type)
    if study_uid is not None and not is_valid_uid(study_uid):
        raise InvalidRequest(f"study UID {study_uid[:80]!r} is not a valid DICOM UID")
    reader = _MultipartReader(stream, boundary, max_bytes)
    result = StowResult(status=200, body={})
    parts = 0
    reader.skip_preamble()
    while reader.next_part():
        parts += 1
        try:
            headers = reader.part_headers()
            part_type = headers.get_content_type() if headers.get("content-type") else None
            path, out = store.new_spool()
        except OSError as exc:
            raise ServiceUnavailable(f"cannot spool STOW-RS part {parts}: {exc}") from exc
        try:
            with out:
                reader.copy_body(out)
        except OSError as exc:  # disk full, or the client went away mid-part
            path.unlink(missing_ok=True)
            raise ServiceUnavailable(f"cannot spool STOW-RS part {parts}: {exc}") from exc
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if part_type not in (None, DICOM_MEDIA_TYPE):
            path.unlink(missing_ok=True)
            message = f"part {parts} is {part_type}, not {DICOM_MEDIA_TYPE}"
            result.failed.append(FailedInstance("", "", 0xC000, message))
            continue
        _store_part(result, path, parts, store, on_stored, study_uid)
    if parts == 0:
        raise InvalidRequest("multipart body holds no part")
    result.status = 200 if not result.failed else 202 if result.stored else 409
    result.body = stow_response(result)
    return result


def _store_part(
    result: StowResult,
    path: Path,
    index: int,
    store: InstanceStore,
    on_stored: OnStored,
    study_uid: str | None,
) -> None:
    try:
        stored = store.store_file(path, source=STOW_SOURCE, expected_study=study_uid)
    except InstanceRefused as exc:
        logger.warning("STOW-RS part %d refused (0x%04X): %s", index, exc.dicom_status, exc)
        result.failed.append(
            FailedInstance(exc.sop_class_uid, exc.sop_instance_uid, exc.dicom_status, exc.message)
        )
        return
    logger.info(
        "STOW-RS: %s %s (series %s)",
        "duplicate" if stored.duplicate else "stored",
        stored.sop_instance_uid,
        stored.series_instance_uid,
    )
    try:
        on_stored(stored)
    except Exception:  # the file is durable; a failure reason makes the client retry
        logger.exception("on_stored failed for %s", stored.sop_instance_uid)
        result.failed.append(
            FailedInstance(
                stored.sop_class_uid,
                stored.sop_instance_uid,
                PROCESSING_FAILURE,
                "stored, but could not be registered; retry",
            )
        )
        return
    result.stored.append(stored)


def stow_response(result: StowResult) -> dict[str, Any]:
    """The STOW-RS response data set (PS3.18 10.5.3) as DICOM JSON."""
    ds = Dataset()
    # Each sequence is present only when it has items (PS3.18 Table 10.5.3-2).
    if result.stored:
        ds.ReferencedSOPSequence = [
            _item(s.sop_class_uid, s.sop_instance_uid) for s in result.stored
        ]
    if result.failed:
        ds.FailedSOPSequence = [
            _item(f.sop_class_uid, f.sop_instance_uid, f.failure_reason) for f in result.failed
        ]
    return dict(ds.to_json_dict())


def _item(sop_class: str, sop: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop
    if reason is not None:
        item.FailureReason = reason
    return item


class _MultipartReader:
    """An incremental RFC 2046 multipart reader over a byte stream: holds at most one chunk
    plus a delimiter's length in memory; counts what it reads against ``limit``."""

    def __init__(self, stream: IO[bytes], boundary: bytes, limit: int) -> None:
        self._stream = stream
        self._delimiter = b"\r\n--" + boundary
        # A delimiter at the very start of the body has no CRLF before it: pretend one.
        self._buffer = bytearray(b"\r\n")
        self._limit = limit
        self._read = 0
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._stream.read(_CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._read += len(chunk)
        if self._read > self._limit:
            raise PayloadTooLarge(f"request body is larger than the limit of {self._limit} bytes")
        self._buffer += chunk
        return True

    def _need(self, size: int) -> bool:
        while len(self._buffer) < size:
            if not self._fill():
                return False
        return True

    def skip_preamble(self) -> None:
        keep = len(self._delimiter) - 1
        while (at := self._buffer.find(self._delimiter)) < 0:
            if len(self._buffer) > keep:
                del self._buffer[:-keep]
            if not self._fill():
                raise InvalidRequest("body is not multipart: no boundary delimiter found")
        del self._buffer[: at + len(self._delimiter)]

    def next_part(self) -> bool:
        """After a delimiter: True when a part follows, False at the closing delimiter."""
        if not self._need(2):
            raise InvalidRequest("multipart body ends after a boundary delimiter")
        if self._buffer.startswith(b"--"):
            return False
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > _MAX_DELIMITER_LINE or not self._fill():
                raise InvalidRequest("malformed multipart boundary line")
        if self._buffer[:end].strip(b" \t"):
            raise InvalidRequest("malformed multipart boundary line")
        del self._buffer[: end + 2]
        return True

    def part_headers(self) -> Message:
        if not self._need(2):
            raise InvalidRequest("multipart body ends inside part headers")
        if self._buffer.startswith(b"\r\n"):
            del self._buffer[:2]
            return Message()
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > _MAX_PART_HEADERS:
                raise InvalidRequest(f"multipart part headers longer than {_MAX_PART_HEADERS}")
            if not self._fill():
                raise InvalidRequest("multipart body ends inside part headers")
        block = bytes(self._buffer[: end + 4])
        del self._buffer[: end + 4]
        return BytesHeaderParser().parsebytes(block)

    def copy_body(self, out: IO[bytes]) -> None:
        """Copy the current part's body to ``out``, up to the next delimiter."""
        keep = len(self._delimiter) - 1
        while (at := self._buffer.find(self._delimiter)) < 0:
            if len(self._buffer) > keep:
                out.write(self._buffer[:-keep])
                del self._buffer[:-keep]
            if not self._fill():
                raise InvalidRequest("multipart body ends inside a part (no closing boundary)")
        out.write(self._buffer[:at])
        del self._buffer[: at + len(self._delimiter)]
