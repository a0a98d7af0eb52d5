"""The instance store: where the DICOM front door (Storage SCP and STOW-RS) writes what it receives.

Owns the on-disk layout ``<data_root>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (the folder a
series job reads), the temporary area ``<data_root>/.incoming/`` (hidden, so series scans skip it)
and the rules of a write:

- **Durable before success.** Bytes go to a new file in ``.incoming/``, are fsynced, then
  hard-linked under their final name (``link`` never replaces an existing file), and the series
  folder is fsynced. A crash leaves at most a stray temporary file, never a partial ``.dcm``; the
  caller answers success only after ``store_*`` returned. Neither Redis nor a worker is involved.
- **As received.** A proper DICOM Part 10 file (preamble, file meta), in the transfer syntax it
  arrived in; nothing is re-encoded. The data root must be one filesystem with hard links.
- **Never silently replaced.** The same SOPInstanceUID again with the same bytes, or the same
  dataset in other bytes (other file meta or transfer syntax, same attributes and pixels), is a
  no-op reported as ``duplicate=True``; different content is refused and the first file stays.
  Uniqueness is per series folder (a SOPInstanceUID reused under another series is not found).
- **UIDs checked before any path is built** (``^[0-9]+(\\.[0-9]+)*$``, at most 64 characters),
  so no received value can name a path outside the data root.

A refusal raises ``InstanceRefused`` whose ``dicom_status`` is both the C-STORE status and the
STOW-RS FailureReason (0008,1197):

======  =====================================================================================
0xC000  Error: cannot understand — not a DICOM Part 10 file, or its header does not parse
0xA900  Error: data set does not match SOP class — a Study/Series/SOP Instance or SOP Class
        UID missing or not UID syntax (path-traversing values included); the file meta (from
        the C-STORE request) names another SOP class/instance than the data set; the data set
        belongs to another study than the STOW-RS target ``/studies/<uid>``
0x0122  Refused: SOP class not supported (not one of ``sop_classes``; CT images by default)
0xC122  Transfer syntax not supported (pydicom here cannot decode its pixel data)
0x0111  Duplicate SOP instance — a different instance is stored under this SOPInstanceUID
0xA700  Refused: out of resources — the file could not be written (disk full, permissions)
======  =====================================================================================
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    AllTransferSyntaxes,
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

from flaskmodel.dicom.files import short_reason
from flaskmodel.errors import InstanceRefused

logger = logging.getLogger(__name__)

#: DICOM UID syntax (PS3.5 9.1): digits in dot-separated components, at most 64 characters.
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64
#: ``calling_ae_title`` of instances received by STOW-RS.
STOW_SOURCE = "STOW-RS"
#: The SOP classes the front door accepts by default: CT images.
CT_STORAGE_SOP_CLASSES: tuple[str, ...] = (
    str(CTImageStorage),
    str(EnhancedCTImageStorage),
    str(LegacyConvertedEnhancedCTImageStorage),
)
INCOMING = ".incoming"

CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700

_PIXEL_DATA = 0x7FE00010


def decodable_transfer_syntaxes() -> tuple[str, ...]:
    """Transfer syntaxes whose pixel data pydicom decodes here, in pydicom's order: the
    uncompressed ones, deflated, and each compressed one whose decoder plugin is installed."""
    found = []
    for uid in AllTransferSyntaxes:
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:  # pydicom has no decoder for it at all (video, private)
            continue
        if available:
            found.append(str(uid))
    return tuple(found)


def is_valid_uid(value: str) -> bool:
    return len(value) <= MAX_UID_LENGTH and UID_PATTERN.match(value) is not None


@dataclass(frozen=True)
class StoredInstance:
    """One received instance, written (or found already written) under the data root.

    Text attributes are ``""`` when the data set lacks them; ``received_at`` is Unix time."""

    series_instance_uid: str
    study_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    calling_ae_title: str
    path: Path
    duplicate: bool
    received_at: float


#: Called after each successful store (duplicates too), from the receiving thread.
OnStored = Callable[[StoredInstance], None]


@dataclass(frozen=True)
class _Header:
    study: str
    series: str
    sop: str
    sop_class: str
    transfer_syntax: str
    dataset: Any

    def refused(self, message: str, status: int) -> InstanceRefused:
        return InstanceRefused(
            message, dicom_status=status, sop_class_uid=self.sop_class, sop_instance_uid=self.sop
        )


class InstanceStore:
    """Writes received instances under ``data_root``; safe to share between threads."""

    def __init__(
        self,
        data_root: Path,
        *,
        sop_classes: Iterable[str] = CT_STORAGE_SOP_CLASSES,
        transfer_syntaxes: Iterable[str] | None = None,
    ) -> None:
        self.root = Path(data_root).absolute()
        self.incoming = self.root / INCOMING
        self.sop_classes = frozenset(sop_classes)
        self.transfer_syntaxes = frozenset(
            decodable_transfer_syntaxes() if transfer_syntaxes is None else transfer_syntaxes
        )
        self.incoming.mkdir(parents=True, exist_ok=True)

    def new_spool(self) -> tuple[Path, BinaryIO]:
        """A new empty file in ``.incoming/``, open for writing; hand it to ``store_file``."""
        while True:
            path = self.incoming / f".{secrets.token_hex(8)}.part"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # 64 random bits: practically never
                continue
            return path, os.fdopen(fd, "wb")

    def sweep_incoming(self, older_than_seconds: float = 3600.0) -> int:
        """Remove spooled files a crashed process left in ``.incoming/`` (those older than
        ``older_than_seconds``, so a live transfer's file is never taken); returns how many."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self.incoming.glob(".*.part"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another process swept it first
                continue
        if removed:
            logger.info("removed %d stale spooled file(s) from %s", removed, self.incoming)
        return removed

    def store_bytes(self, data: bytes, *, source: str) -> StoredInstance:
        """Store one Part 10 file given as bytes (the SCP's received data set with its meta)."""
        header = self._header(BytesIO(data), source)
        path, out = self.new_spool()
        try:
            with out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            path.unlink(missing_ok=True)
            message = f"cannot write instance {header.sop}: {exc}"
            raise header.refused(message, OUT_OF_RESOURCES) from exc
        return self._commit(path, header, source)

    def store_file(
        self, path: Path, *, source: str, expected_study: str | None = None
    ) -> StoredInstance:
        """Store one Part 10 file spooled into ``.incoming/`` (``new_spool``); the spooled file
        is moved into place or removed, in every case. ``expected_study`` refuses (0xA900) an
        instance of another study."""
        try:
            with path.open("rb") as fp:
                header = self._header(fp, source)
                os.fsync(fp.fileno())
            if expected_study is not None and header.study != expected_study:
                raise header.refused(
                    f"instance {header.sop} belongs to study {header.study}, not to the target "
                    f"study {expected_study}",
                    DOES_NOT_MATCH,
                )
            return self._commit(path, header, source)
        finally:
            path.unlink(missing_ok=True)

    def _header(self, fp: BinaryIO, source: str) -> _Header:
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            transfer_syntax = _text(ds.file_meta, "TransferSyntaxUID")
            meta_class = _text(ds.file_meta, "MediaStorageSOPClassUID")
            meta_instance = _text(ds.file_meta, "MediaStorageSOPInstanceUID")
            uids = {
                "StudyInstanceUID": _text(ds, "StudyInstanceUID"),
                "SeriesInstanceUID": _text(ds, "SeriesInstanceUID"),
                "SOPInstanceUID": _text(ds, "SOPInstanceUID"),
                "SOPClassUID": _text(ds, "SOPClassUID"),
            }
        except Exception as exc:  # pydicom raises many types on corrupt or non-DICOM input
            raise InstanceRefused(
                f"not a DICOM Part 10 file (from {source}): {short_reason(exc)}",
                dicom_status=CANNOT_UNDERSTAND,
            ) from exc
        for keyword, value in uids.items():
            if not is_valid_uid(value):
                raise InstanceRefused(
                    f"{keyword} {value[:80]!r} (from {source}) is missing or not a valid UID",
                    dicom_status=DOES_NOT_MATCH,
                )
        header = _Header(
            uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"],
            uids["SOPClassUID"], transfer_syntax, ds,
        )  # fmt: skip
        if (meta_instance and meta_instance != header.sop) or (
            meta_class and meta_class != header.sop_class
        ):
            raise header.refused(
                f"data set of instance {header.sop} (class {header.sop_class}) was sent as "
                f"instance {meta_instance[:80]!r} of class {meta_class[:80]!r}",
                DOES_NOT_MATCH,
            )
        if header.sop_class not in self.sop_classes:
            raise header.refused(
                f"SOP class {header.sop_class} is not accepted (instance {header.sop})",
                SOP_CLASS_NOT_SUPPORTED,
            )
        if transfer_syntax not in self.transfer_syntaxes:
            raise header.refused(
                f"transfer syntax {transfer_syntax[:80]!r} is not accepted (instance {header.sop})",
                TRANSFER_SYNTAX_NOT_SUPPORTED,
            )
        return header

    def _commit(self, spooled: Path, header: _Header, source: str) -> StoredInstance:
        series_dir = self.root / header.series
        final = series_dir / f"{header.sop}.dcm"
        try:
            if not series_dir.is_dir():
                series_dir.mkdir(exist_ok=True)
                _fsync_dir(self.root)
            try:
                # link, unlike rename, never replaces a file already there.
                os.link(spooled, final)
                duplicate = False
            except FileExistsError:
                duplicate = True
            if not duplicate:
                _fsync_dir(series_dir)
            same = not duplicate or _same_instance(final, spooled)
        except OSError as exc:
            raise header.refused(
                f"cannot write instance {header.sop} under the data root: {exc}", OUT_OF_RESOURCES
            ) from exc
        finally:
            spooled.unlink(missing_ok=True)
        if not same:
            raise header.refused(
                f"a different instance is already stored under SOPInstanceUID {header.sop} "
                f"(series {header.series}); the stored one is kept, this one is refused",
                DUPLICATE_SOP_INSTANCE,
            )
        ds = header.dataset
        return StoredInstance(
            series_instance_uid=header.series,
            study_instance_uid=header.study,
            sop_instance_uid=header.sop,
            sop_class_uid=header.sop_class,
            transfer_syntax_uid=header.transfer_syntax,
            modality=_attribute(ds, "Modality"),
            body_part_examined=_attribute(ds, "BodyPartExamined"),
            series_description=_attribute(ds, "SeriesDescription"),
            calling_ae_title=source,
            path=final,
            duplicate=duplicate,
            received_at=time.time(),
        )


def _text(ds: Any, keyword: str) -> str:
    """A UID or code string as sent, without pydicom's value validation (which warns, or raises
    under strict settings, on exactly the malformed values this module must refuse itself)."""
    elem = ds.get_item(keyword)
    value = None if elem is None else elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\0 ")
    return str(value).strip("\0 ")


def _attribute(ds: Any, keyword: str) -> str:
    """A descriptive text attribute decoded in the data set's character set ("" if unreadable)."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed optional attribute must not fail a stored instance
        logger.warning("unreadable %s in a received instance", keyword, exc_info=True)
        return ""
    return "" if value is None else str(value).strip()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_instance(stored: Path, received: Path) -> bool:
    """Whether ``received`` holds the instance already ``stored``: the same bytes, or the same
    data set in other bytes (other file meta; other transfer syntax with equal decoded pixels).
    Anything that cannot be compared counts as different, so the stored file is kept."""
    if filecmp.cmp(stored, received, shallow=False):
        return True
    try:
        old = pydicom.dcmread(stored)
        new = pydicom.dcmread(received)
        tags = set(old.keys())
        if tags != set(new.keys()):
            return False
        if any(old[tag] != new[tag] for tag in tags if tag != _PIXEL_DATA):
            return False
        if _PIXEL_DATA not in tags:
            return True
        if old.file_meta.TransferSyntaxUID == new.file_meta.TransferSyntaxUID:
            return bool(old.PixelData == new.PixelData)
        return bool(np.array_equal(old.pixel_array, new.pixel_array))
    except Exception:  # unreadable or undecodable: not provably the same instance
        logger.warning("cannot compare %s with a received instance", stored, exc_info=True)
        return False
