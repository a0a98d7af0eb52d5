"""Send one DICOM object (a job's SR) to one destination, one try per call.

``send_report`` stores by C-STORE (pynetdicom SCU: calling AE ``dicom.ae_title``, the
destination's host, port and called AE title) or by STOW-RS (dicomweb-client) and returns an
``ExportOutcome``, or raises ``RemoteUnavailable`` when a later try may succeed (connection
refused or timed out, association rejected as transient or aborted, HTTP 408/429/5xx, DIMSE
"out of resources") or ``RemoteRejected``/``RemoteAuthFailed`` when it will not (association
rejected as permanent, e.g. an unknown called AE title; SR storage not accepted; HTTP 4xx;
a DIMSE or STOW failure status). ``is_retryable`` says which.

Retrying is the caller's: ``backoff_schedule`` gives the waits between the ``export_attempts``
tries (``export_backoff_seconds``, doubling). Sending the same report again is harmless: its
SOPInstanceUID is fixed per job (``flaskmodel.dicom.network.sr.report_uids``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from flaskmodel.dicom.network.pull import dicomweb_client, remote_error
from flaskmodel.errors import (
    FlaskModelError,
    RemoteRejected,
    RemoteUnavailable,
)
from flaskmodel.settings.dicom import DicomDestination, DicomSettings

__all__ = [
    "ExportOutcome",
    "backoff_schedule",
    "is_retryable",
    "send_report",
]

logger = logging.getLogger(__name__)

# DIMSE statuses (PS3.4 Annex B, PS3.7 Annex C) after which a later try may succeed: out of
# resources (A7xx) and "resource limitation" (0213).
_RETRYABLE_STATUS = (range(0xA700, 0xA800), range(0x0213, 0x0214))
# Warning statuses of C-STORE (coercion, elements discarded, mismatch): the object is stored.
_WARNING_STATUS = frozenset({0x0001, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class ExportOutcome:
    """A stored report: where, which instance, and what the destination said."""

    destination: str
    kind: Literal["dimse", "dicomweb"]
    sop_instance_uid: str
    detail: str


def backoff_schedule(settings: DicomSettings) -> list[float]:
    """Seconds to wait before each retry: ``export_attempts - 1`` waits, the first
    ``export_backoff_seconds``, each next one doubled (5 tries, 2 s: ``[2, 4, 8, 16]``)."""
    first = settings.export_backoff_seconds
    return [first * 2**i for i in range(settings.export_attempts - 1)]


def is_retryable(exc: BaseException) -> bool:
    """Whether another try of the same export may succeed."""
    return isinstance(exc, RemoteUnavailable)


def send_report(
    report: Dataset, name: str, destination: DicomDestination, calling_ae_title: str
) -> ExportOutcome:
    """Store ``report`` at ``destination`` (``name`` in settings); one try (see module doc)."""
    if destination.kind == "dimse":
        return _c_store(report, name, destination, calling_ae_title)
    return _stow(report, name, destination)


def _c_store(
    report: Dataset, name: str, destination: DicomDestination, calling_ae_title: str
) -> ExportOutcome:
    assert destination.host and destination.port and destination.ae_title  # settings check
    where = f"destination '{name}' ({destination.ae_title}@{destination.host}:{destination.port})"
    timeout = destination.timeout_seconds
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(report.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    # What came back: the A-ASSOCIATE response (a transient rejection is worth a retry) and
    # whether the TCP connection opened at all (pynetdicom reports a refused one as an abort).
    answers: list[Any] = []

    def keep(event: evt.Event) -> None:
        answers.append(getattr(event, "primitive", None))  # set per event kind

    def opened(event: evt.Event) -> None:
        answers.append("connected")

    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_ACSE_RECV, keep), (evt.EVT_CONN_OPEN, opened)],
    )
    try:
        if not assoc.is_established:
            raise _association_error(assoc, answers, where)
        try:
            status = assoc.send_c_store(report)
        except (ValueError, RuntimeError) as exc:  # no usable presentation context
            raise RemoteRejected(f"{where} cannot take the report: {exc}") from exc
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(status.get("Status", -1)) if status else -1
    if code == -1:
        raise RemoteUnavailable(f"{where}: no C-STORE response (connection lost or timed out)")
    if code == 0x0000 or code in _WARNING_STATUS:
        detail = f"C-STORE status 0x{code:04X}"
        logger.info("sent SR %s to %s: %s", report.SOPInstanceUID, where, detail)
        return ExportOutcome(name, "dimse", str(report.SOPInstanceUID), detail)
    comment = str(status.get("ErrorComment", "")).strip()
    message = f"{where} answered C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else "")
    if any(code in r for r in _RETRYABLE_STATUS):
        raise RemoteUnavailable(message)
    raise RemoteRejected(message)


def _association_error(assoc: Any, answers: list[Any], where: str) -> FlaskModelError:
    """Why the association did not come up: rejected (permanent or transient), no accepted
    presentation context, aborted, or no connection at all."""
    if "connected" not in answers:
        return RemoteUnavailable(f"{where} is unreachable (connection refused or timed out)")
    if assoc.is_rejected:
        reply = next((a for a in answers if getattr(a, "result", None) in (1, 2)), None)
        if reply is None:
            return RemoteRejected(f"{where} rejected the association")
        message = f"{where} rejected the association: {reply.result_str}, {reply.reason_str}"
        return RemoteUnavailable(message) if reply.result == 2 else RemoteRejected(message)
    if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
        return RemoteRejected(f"{where} does not accept this SOP class (no presentation context)")
    return RemoteUnavailable(f"{where} aborted the association or did not answer in time")


def _stow(report: Dataset, name: str, destination: DicomDestination) -> ExportOutcome:
    assert destination.url  # settings check
    where = f"destination '{name}' ({destination.url})"
    client = dicomweb_client(
        destination.url,
        username=destination.username,
        password=destination.password,
        token=destination.token,
        timeout_seconds=destination.timeout_seconds,
    )
    try:
        answer = client.store_instances([report])
    except (requests.RequestException, ValueError) as exc:
        raise remote_error(exc, where) from exc
    failed = list(answer.get("FailedSOPSequence", []))
    if failed:
        reason = int(failed[0].get("FailureReason", 0x0110))
        message = f"{where} refused the report: STOW-RS failure reason 0x{reason:04X}"
        if any(reason in r for r in _RETRYABLE_STATUS):
            raise RemoteUnavailable(message)
        raise RemoteRejected(message)
    stored = list(answer.get("ReferencedSOPSequence", []))
    warning = stored[0].get("WarningReason") if stored else None
    detail = "STOW-RS stored" + (f", warning 0x{int(warning):04X}" if warning else "")
    logger.info("sent SR %s to %s: %s", report.SOPInstanceUID, where, detail)
    return ExportOutcome(name, "dicomweb", str(report.SOPInstanceUID), detail)
