"""The FlaskModel error tree.

Every error a user can cause or meet is one of these; the web layer maps the classes to HTTP
status codes once (``flaskmodel.web.errors``) and the worker records ``error_type`` (the class's
``type`` attribute) and the message in the job record. This module imports neither Flask nor Celery.

::

    FlaskModelError
    ├── InvalidRequest            400  malformed body, bad field, bad key name
    │   ├── InvalidInput          400  tensor does not match the model signature
    │   └── InvalidSeriesId       400  series id outside the allowed characters / data root
    ├── Unauthorized              401  no API key, or not a configured one
    ├── NotFound                  404
    │   ├── JobNotFound           404  unknown or expired job id
    │   ├── ModelNotFound         404  no such model (or version)
    │   ├── SeriesNotFound        404  no slices for a series under the data root
    │   └── KeyNotFound           404  key/value API
    ├── Conflict                  409  e.g. cancelling a finished job
    │   └── JobCancelled          409  a running job found itself cancelled (stops it)
    ├── PayloadTooLarge           413
    ├── UnsupportedMediaType      415  a body of a content type the endpoint does not take (STOW-RS)
    ├── SeriesError               422  DICOM that cannot be used (unreadable file, empty range, ...)
    │   ├── DicomReadError        422  one file that does not read or decode (names the file)
    │   └── InstanceRefused       422  a received instance not stored; carries its DICOM status
    ├── Overloaded                429  admission control
    │   └── RateLimited           429  a caller past its rate limit
    ├── RemoteRejected            502  a DICOM peer (PACS source, export destination) refused a
    │   │                              request: 4xx, rejected association, failure status; final
    │   └── RemoteAuthFailed      502  the peer refused our credentials (HTTP 401/403)
    ├── ServiceUnavailable        503  Redis down, no worker serving a model, model not ready
    │   └── RemoteUnavailable     503  a DICOM peer is unreachable, timed out or failed (5xx);
    │                                  retrying later may help
    ├── JobTimeout                504  a job or call ran past its time limit
    │   └── DeadlineExceeded      504  a synchronous call's deadline passed before its answer
    └── InternalError             500  a bug; never raised for bad input
"""

from __future__ import annotations


class FlaskModelError(Exception):
    """Base class: ``type`` is the machine-readable name, ``status`` the HTTP status code."""

    type = "error"
    status = 500

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


class InvalidRequest(FlaskModelError):
    type = "invalid_request"
    status = 400


class InvalidInput(InvalidRequest):
    type = "invalid_input"


class InvalidSeriesId(InvalidRequest):
    type = "invalid_series_id"


class Unauthorized(FlaskModelError):
    type = "unauthorized"
    status = 401


class NotFound(FlaskModelError):
    type = "not_found"
    status = 404


class JobNotFound(NotFound):
    type = "job_not_found"


class ModelNotFound(NotFound):
    type = "model_not_found"


class SeriesNotFound(NotFound):
    type = "series_not_found"


class KeyNotFound(NotFound):
    type = "key_not_found"


class Conflict(FlaskModelError):
    type = "conflict"
    status = 409


class JobCancelled(Conflict):
    type = "cancelled"


class PayloadTooLarge(FlaskModelError):
    type = "payload_too_large"
    status = 413


class UnsupportedMediaType(FlaskModelError):
    type = "unsupported_media_type"
    status = 415


class SeriesError(FlaskModelError):
    type = "series_error"
    status = 422


class DicomReadError(SeriesError):
    type = "dicom_read_error"


class InstanceRefused(SeriesError):
    """A received DICOM instance (C-STORE or STOW-RS) that is not stored. ``dicom_status`` is
    the C-STORE status and the STOW-RS FailureReason (table in ``flaskmodel.dicom.network.store``);
    the UIDs are the instance's when they were read and valid, else ``""``.
    """

    type = "instance_refused"

    def __init__(
        self,
        message: str,
        *,
        dicom_status: int,
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
    ) -> None:
        super().__init__(message)
        self.dicom_status = dicom_status
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


class Overloaded(FlaskModelError):
    type = "overloaded"
    status = 429


class RateLimited(Overloaded):
    type = "rate_limited"


class RemoteRejected(FlaskModelError):
    """A DICOM peer refused what we asked; sending the same again will not help."""

    type = "remote_rejected"
    status = 502


class RemoteAuthFailed(RemoteRejected):
    type = "remote_auth_failed"


class ServiceUnavailable(FlaskModelError):
    type = "service_unavailable"
    status = 503


class RemoteUnavailable(ServiceUnavailable):
    """A DICOM peer could not be reached or failed on its side; a later try may succeed."""

    type = "remote_unavailable"


class JobTimeout(FlaskModelError):
    type = "timeout"
    status = 504


class DeadlineExceeded(JobTimeout):
    type = "deadline_exceeded"


class InternalError(FlaskModelError):
    type = "internal_error"
    status = 500


_BY_TYPE: dict[str, type[FlaskModelError]] = {}


def _collect(cls: type[FlaskModelError]) -> None:
    _BY_TYPE[cls.type] = cls
    for sub in cls.__subclasses__():
        _collect(sub)


_collect(FlaskModelError)


def error_class(type_name: str) -> type[FlaskModelError]:
    """The class for a recorded ``error_type`` (``FlaskModelError`` when unknown)."""
    return _BY_TYPE.get(type_name, FlaskModelError)
