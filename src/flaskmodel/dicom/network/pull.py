"""Pull a series from a DICOMweb source (WADO-RS) into the PACS cache under the data root.

Cache layout: ``<data_root>/.pacs/<source>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, one file
per instance as the source sent it (any transfer syntax: we ask for ``*``, and our decoders read
the standard ones). The hidden ``.pacs`` folder is never a series id itself; a pulled series is
scanned with ``scan_series(pulled.root, pulled.series_uid)`` (its root is the source's cache
folder, which lies inside the data root, so slice reads against the data root still pass).

A pull lists the series' instances with QIDO-RS, then fetches only those not cached yet (the whole
series in one WADO-RS stream when most are missing, else instance by instance): a redelivered job
downloads nothing again. Files are written to a hidden temporary name and renamed, so a reader
(or a crash) never sees half a file; cached instances the source no longer lists are removed.

This module also owns what pulls and STOW-RS exports share: ``dicomweb_client`` (basic auth or
bearer token, no retries inside the library: callers decide) and ``remote_error`` (a
``requests`` failure turned into ``RemoteUnavailable``, retryable, or ``RemoteRejected``/
``RemoteAuthFailed``, final).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session, create_session_from_user_pass
from pydantic import SecretStr

from flaskmodel.errors import (
    FlaskModelError,
    InvalidRequest,
    RemoteAuthFailed,
    RemoteRejected,
    RemoteUnavailable,
    SeriesError,
    SeriesNotFound,
)
from flaskmodel.schemas import DICOM_UID_PATTERN, ENDPOINT_NAME_PATTERN
from flaskmodel.settings.dicom import DicomWebSource

__all__ = [
    "ANY_TRANSFER_SYNTAX",
    "PACS_CACHE",
    "PulledSeries",
    "cache_root",
    "check_uid",
    "dicomweb_client",
    "pull_series",
    "remote_error",
]

logger = logging.getLogger(__name__)

#: The cache folder under the data root (hidden: the scanner and series ids never reach it).
PACS_CACHE = ".pacs"
#: WADO-RS accept: DICOM Part 10 in whatever transfer syntax the source stores.
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
#: HTTP statuses worth another try later (the peer is busy or failing on its side).
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
# Temporary files of pulls that died mid-write are removed after this long (a live pull of the
# same series in another process may still own a younger one).
_STALE_PART_SECONDS = 3600.0
# Stream the whole series when more than this share of its instances is missing.
_STREAM_SHARE = 0.5
# Safety net for sources that ignore QIDO's offset: stop after this many pages.
_MAX_PAGES = 1000


@dataclass(frozen=True)
class PulledSeries:
    """A series in the cache: scan it with ``scan_series(root, series_uid)``."""

    source: str
    study_uid: str
    series_uid: str
    root: Path
    """The source's cache folder, ``<data_root>/.pacs/<source>``."""
    folder: Path
    """``root / series_uid``: one ``<SOPInstanceUID>.dcm`` per instance."""
    instances: int
    downloaded: int
    removed: int


def check_uid(value: str, what: str) -> str:
    """``value`` when it is a DICOM UID (digits and dots, ≤ 64), else ``InvalidRequest``."""
    if len(value) > 64 or not re.match(DICOM_UID_PATTERN, value):
        raise InvalidRequest(f"{what} {value[:80]!r} is not a DICOM UID")
    return value


def cache_root(data_root: Path, source_name: str) -> Path:
    """``<data_root>/.pacs/<source_name>`` (the name is checked: it becomes a folder)."""
    if not re.match(ENDPOINT_NAME_PATTERN, source_name):
        raise InvalidRequest(f"invalid DICOMweb source name {source_name[:80]!r}")
    return data_root / PACS_CACHE / source_name


def dicomweb_client(
    url: str,
    *,
    username: str | None = None,
    password: SecretStr | None = None,
    token: SecretStr | None = None,
    timeout_seconds: float = 60.0,
) -> DICOMwebClient:
    """A client for one DICOMweb API: basic auth when a user is given, else a bearer token when
    one is, else none. The library's own retries are off (each call is one try)."""
    if username:
        secret = password.get_secret_value() if password else ""
        session = create_session_from_user_pass(username, secret)
    else:
        session = create_session()
        if token:
            session.headers["Authorization"] = f"Bearer {token.get_secret_value()}"
    try:
        client = DICOMwebClient(url, session=session, timeout=timeout_seconds)
    except ValueError as exc:  # a URL it cannot use (no http/https scheme, no host)
        raise RemoteRejected(f"cannot use DICOMweb URL {url!r}: {exc}") from exc
    client.set_http_retry_params(retry=False)
    return client


def remote_error(exc: Exception, where: str) -> FlaskModelError:
    """The error for a failed DICOMweb call to ``where`` (a phrase naming the peer)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        reason = exc.response.reason or ""
        if status in (401, 403):
            return RemoteAuthFailed(f"{where} refused our credentials (HTTP {status} {reason})")
        if status in RETRYABLE_HTTP:
            return RemoteUnavailable(f"{where} failed: HTTP {status} {reason}")
        return RemoteRejected(f"{where} refused the request: HTTP {status} {reason}")
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return RemoteRejected(f"{where}: invalid URL ({exc})")
    if isinstance(exc, requests.Timeout):
        return RemoteUnavailable(f"{where} timed out ({type(exc).__name__})")
    if isinstance(exc, requests.ConnectionError):
        return RemoteUnavailable(f"{where} is unreachable: {_first_line(exc)}")
    if isinstance(exc, requests.RequestException):  # e.g. a stream cut off midway
        return RemoteUnavailable(f"{where} failed: {type(exc).__name__}: {_first_line(exc)}")
    return RemoteRejected(f"{where} answered something unusable: {_first_line(exc)}")


def pull_series(
    data_root: Path,
    source_name: str,
    source: DicomWebSource,
    study_uid: str,
    series_uid: str,
) -> PulledSeries:
    """Bring the series into ``<data_root>/.pacs/<source_name>/<series_uid>/`` (see module doc).

    Raises ``InvalidRequest`` for a bad UID or source name, ``SeriesNotFound`` when the source
    knows no instance of the series, ``RemoteAuthFailed`` (401/403), ``RemoteUnavailable``
    (unreachable, timeout, 5xx: retry later), ``RemoteRejected`` (other refusals) and
    ``SeriesError`` when the source sends instances of another series or with bad UIDs.
    """
    check_uid(study_uid, "StudyInstanceUID")
    check_uid(series_uid, "SeriesInstanceUID")
    root = cache_root(data_root, source_name)
    folder = root / series_uid
    where = f"DICOMweb source '{source_name}'"
    client = dicomweb_client(
        source.url,
        username=source.username,
        password=source.password,
        token=source.token,
        timeout_seconds=source.timeout_seconds,
    )
    listed = _list_instances(client, where, study_uid, series_uid)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(folder)
    cached = {p.stem for p in folder.glob("*.dcm")}
    missing = [uid for uid in listed if uid not in cached]
    removed = 0
    for stale in sorted(cached - set(listed)):
        # The source no longer has it: a scan must not count it as a slice.
        (folder / f"{stale}.dcm").unlink(missing_ok=True)
        removed += 1

    downloaded = 0
    if len(missing) > _STREAM_SHARE * len(listed):
        wanted = set(missing)
        stream = _call(where, client.iter_series, study_uid, series_uid, ANY_TRANSFER_SYNTAX)
        for ds in _guarded(stream, where):
            uid = _instance_uid(ds, series_uid, where)
            if uid in wanted:
                _write_atomically(ds, folder / f"{uid}.dcm")
                wanted.discard(uid)
                downloaded += 1
        if wanted:
            raise SeriesError(
                f"{where} listed {len(wanted)} instance(s) of series '{series_uid}' it did not "
                f"send, e.g. '{min(wanted)}'"
            )
    else:
        for uid in missing:
            ds = _call(
                where, client.retrieve_instance, study_uid, series_uid, uid, ANY_TRANSFER_SYNTAX
            )
            if _instance_uid(ds, series_uid, where) != uid:
                raise SeriesError(f"{where} sent another instance when asked for '{uid}'")
            _write_atomically(ds, folder / f"{uid}.dcm")
            downloaded += 1
    logger.info(
        "pulled series %s from %s: %d instance(s), %d downloaded, %d removed",
        series_uid,
        source_name,
        len(listed),
        downloaded,
        removed,
    )
    return PulledSeries(
        source_name, study_uid, series_uid, root, folder, len(listed), downloaded, removed
    )


def _list_instances(
    client: DICOMwebClient, where: str, study_uid: str, series_uid: str
) -> list[str]:
    """SOPInstanceUIDs of the series (QIDO-RS, paged by offset until a page brings nothing new)."""
    found: dict[str, None] = {}
    offset = 0
    for _ in range(_MAX_PAGES):
        page = _call(
            where,
            client.search_for_instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            offset=offset or None,
        )
        new = 0
        for item in page:
            uid = _json_value(item, "00080018")
            if uid is None or not re.match(DICOM_UID_PATTERN, uid) or len(uid) > 64:
                raise SeriesError(f"{where} lists an instance with SOPInstanceUID {uid!r}")
            if uid not in found:
                found[uid] = None
                new += 1
        if not new:
            break
        offset += len(page)
    if not found:
        raise SeriesNotFound(f"series '{series_uid}' not found on {where}")
    return list(found)


def _call(where: str, method: Any, *args: Any, **kwargs: Any) -> Any:
    """One DICOMweb call with its failures turned into our errors."""
    try:
        return method(*args, **kwargs)
    except (requests.RequestException, ValueError) as exc:
        raise _pull_error(exc, where) from exc


def _guarded(stream: Iterable[Any], where: str) -> Iterable[Any]:
    """The instances of a WADO-RS stream (whose request starts at the first item), with
    failures turned into our errors."""
    iterator = iter(stream)
    while True:
        try:
            ds = next(iterator)
        except StopIteration:
            return
        except (requests.RequestException, ValueError) as exc:
            raise _pull_error(exc, where) from exc
        yield ds


def _pull_error(exc: Exception, where: str) -> FlaskModelError:
    """``remote_error``, except that a 404 means the series is not there."""
    response = exc.response if isinstance(exc, requests.HTTPError) else None
    if response is not None and response.status_code == 404:
        return SeriesNotFound(f"series not found on {where} (HTTP 404)")
    return remote_error(exc, where)


def _instance_uid(ds: Any, series_uid: str, where: str) -> str:
    """The received instance's SOPInstanceUID, checked before it names a file."""
    if str(ds.get("SeriesInstanceUID", "")) != series_uid:
        raise SeriesError(f"{where} sent an instance of another series than '{series_uid}'")
    uid = str(ds.get("SOPInstanceUID", ""))
    if len(uid) > 64 or not re.match(DICOM_UID_PATTERN, uid):
        raise SeriesError(f"{where} sent an instance with SOPInstanceUID {uid[:80]!r}")
    return uid


def _write_atomically(ds: Any, target: Path) -> None:
    """Write the instance as a Part 10 file under a hidden name, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _remove_stale_parts(folder: Path) -> None:
    cutoff = time.time() - _STALE_PART_SECONDS
    for part in folder.glob(".*.part"):
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_mtime < cutoff:
                part.unlink()


def _json_value(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
