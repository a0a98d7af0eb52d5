"""A finished series job's result, sent as DICOM SR to the destinations its request names.

Runs in the worker right after the job's result is written (the job is ``SUCCEEDED`` while its
exports go on), one destination after the other, each tried up to ``dicom.export_attempts`` times
with doubling waits while its failures are retryable. Every try is recorded in the job
(``exports: [{destination, state, attempts, error}]``). A destination already ``SENT`` or
``FAILED`` is never tried again: a redelivered message of a finished job (its worker died while
exporting) resumes with the destinations still ``PENDING``. Should a worker die between a send
and its record, the resumed send carries the same SOPInstanceUID (the report's UIDs derive from
the job id), so the destination keeps one copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import pydicom

from flaskmodel.dicom.network.export import backoff_schedule, is_retryable, send_report
from flaskmodel.dicom.network.sr import build_report
from flaskmodel.dicom.series import scan_series
from flaskmodel.errors import FlaskModelError, InvalidRequest
from flaskmodel.jobs.store import JobStore
from flaskmodel.schemas import ExportState, JobRequest, JobState
from flaskmodel.settings import Settings
from flaskmodel.worker.series_source import series_root

logger = logging.getLogger(__name__)

ExportStep = Literal["PENDING", "SENT", "FAILED"]


class SeriesExports:
    """Sends series jobs' DICOM SR to their destinations and records how it went."""

    def __init__(
        self, settings: Settings, jobs: JobStore, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._sleep = sleep

    def pending(self, job_id: str, request: JobRequest) -> list[str]:
        """The destinations of the job not yet SENT or FAILED."""
        done = {e.destination for e in self._jobs.exports(job_id) if e.state != "PENDING"}
        return [name for name in request.exports or [] if name not in done]

    def run(self, job_id: str) -> None:
        """Export a SUCCEEDED job to each of its pending destinations."""
        request = self._jobs.request(job_id)
        todo = self.pending(job_id, request)
        if not todo or self._jobs.state(job_id) is not JobState.SUCCEEDED:
            return
        states = {e.destination: e for e in self._jobs.exports(job_id)}
        for name in todo:  # all PENDING first: the job shows every export it will make
            states.setdefault(name, ExportState(destination=name))
            self._jobs.set_export(job_id, states[name])
        try:
            report = self._report(job_id, request)
        except FlaskModelError as exc:
            for name in todo:
                self._record(job_id, states[name], "FAILED", error=f"{exc.type}: {exc.message}")
            return
        for name in todo:
            self._send(job_id, report, states[name])

    def _report(self, job_id: str, request: JobRequest) -> Any:
        view = self._jobs.get(job_id)
        if view.result is None or request.series_uid is None:
            raise InvalidRequest(f"job '{job_id}' has no result to export")
        series = scan_series(series_root(request, self._settings), request.series_uid)
        first = series.slices[0]
        source = pydicom.dcmread(first.path, stop_before_pixels=True)
        # The result names the series as the request did (a folder name, or its UID).
        result = {**view.result, "series_uid": first.series_instance_uid}
        return build_report(job_id, result, source)

    def _send(self, job_id: str, report: Any, state: ExportState) -> None:
        settings = self._settings.dicom
        destination = settings.destinations.get(state.destination)
        if destination is None:
            self._record(job_id, state, "FAILED", error="no such destination in dicom.destinations")
            return
        waits = backoff_schedule(settings)
        while True:
            state.attempts += 1
            try:
                outcome = send_report(report, state.destination, destination, settings.ae_title)
            except FlaskModelError as exc:
                error = f"{exc.type}: {exc.message}"
                if not is_retryable(exc) or state.attempts > len(waits):
                    logger.warning(
                        "job %s: export to %s failed: %s", job_id, state.destination, error
                    )
                    self._record(job_id, state, "FAILED", error=error)
                    return
                self._record(job_id, state, "PENDING", error=error)
                self._sleep(waits[state.attempts - 1])
                continue
            logger.info("job %s: SR sent to %s (%s)", job_id, state.destination, outcome.detail)
            state.sop_instance_uid = outcome.sop_instance_uid
            state.sent_at = datetime.now(UTC).isoformat(timespec="milliseconds")
            self._record(job_id, state, "SENT", error=None)
            return

    def _record(
        self, job_id: str, state: ExportState, to: ExportStep, *, error: str | None
    ) -> None:
        state.state = to
        state.error = error
        self._jobs.set_export(job_id, state)
