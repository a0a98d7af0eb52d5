"""``SeriesTracker``: received instances → complete series → a job by the routing rules.

A series is complete when no new instance has arrived for ``dicom.stable_seconds`` (MIG and
Orthanc decide the same way). Its first matching rule (``routing.route_for``) names the model;
the job is submitted like any ``POST /v1/jobs`` series job. An instance arriving after that makes
the series ``RECEIVING`` again, and once it is stable again a new job runs over every instance and
supersedes the first (which is cancelled if it has not ended).

Nothing is lost across restarts: the instances are files under ``<data_root>/<uid>/`` (the
``InstanceStore`` answers success only once they are durable), and each series' record is
journalled to ``<data_root>/.gateway/<uid>.json`` when it first arrives and whenever its state
changes. On start the journal is read back and the received counts are taken from the files, so
a series that was still arriving, or got instances while the tracker was down, is routed once
stable. A submit carries an idempotency key per series and run, so a crash between the submit
and the journal write finds the same job again instead of starting a second. Redis holds only a
mirror for the web tier (``storage.received_series``), flushed by the tracker's loop; while Redis
is down, receiving goes on and submits are retried.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime

from redis import RedisError

from flaskmodel.dicom.network.store import StoredInstance
from flaskmodel.errors import Conflict, FlaskModelError, JobNotFound, Overloaded, ServiceUnavailable
from flaskmodel.gateway.routing import route_for
from flaskmodel.jobs.submit import JobSubmitter
from flaskmodel.schemas import JobRequest, ReceivedSeries, SeriesJobRun
from flaskmodel.settings import Settings
from flaskmodel.storage.received_series import ReceivedSeriesStore

logger = logging.getLogger(__name__)

#: Where the journal lives under the data root (a name no series id can take: it starts with .).
JOURNAL_DIR = ".gateway"
#: Seconds between tries of a submit that failed for a reason that may pass (no worker, Redis).
RETRY_SECONDS = 5.0


def run_key(record: ReceivedSeries) -> str:
    """The idempotency key of the series' next job: one per reception (its first arrival, as
    journalled) and run, so a repeated submit finds its job and a later reception starts anew."""
    return f"dicom-series:{record.series_uid}:{record.first_received_at}:{len(record.jobs)}"


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


class SeriesTracker:
    """Tracks received series and routes complete ones to jobs (one per front-door process)."""

    def __init__(
        self, settings: Settings, submitter: JobSubmitter, mirror: ReceivedSeriesStore
    ) -> None:
        self._settings = settings
        self._submitter = submitter
        self._mirror = mirror
        self._root = settings.data_root
        self._journal = settings.data_root / JOURNAL_DIR
        self._lock = threading.Lock()
        self._records: dict[str, ReceivedSeries] = {}
        self._last_seen: dict[str, float] = {}  # wall-clock epoch of the newest instance
        self._retry_at: dict[str, float] = {}
        self._dirty: set[str] = set()

    # -- receiving ---------------------------------------------------------------------------

    def on_stored(self, instance: StoredInstance) -> None:
        """Count one stored instance (called by the SCP and STOW-RS threads)."""
        uid = instance.series_instance_uid
        now = time.time()
        with self._lock:
            record = self._records.get(uid)
            if record is None:
                record = ReceivedSeries(
                    series_uid=uid,
                    study_uid=instance.study_instance_uid or None,
                    first_received_at=_stamp(now),
                    last_received_at=_stamp(now),
                    modality=instance.modality or None,
                    body_part_examined=instance.body_part_examined or None,
                    series_description=instance.series_description or None,
                    calling_ae_title=instance.calling_ae_title or None,
                )
                self._records[uid] = record
                self._write_journal(record)
                logger.info("series %s: first instance from %s", uid, instance.calling_ae_title)
            if instance.duplicate:
                record.duplicates += 1
            else:
                record.received += 1
                record.last_received_at = _stamp(now)
                self._last_seen[uid] = now
                if record.state != "RECEIVING":
                    logger.info("series %s: late instance (was %s); runs again", uid, record.state)
                    record.state = "RECEIVING"
                    record.error = None
                    self._write_journal(record)
            self._dirty.add(uid)

    # -- completing ----------------------------------------------------------------------------

    def tick(self) -> None:
        """Route the series that became stable and flush changed records to the mirror."""
        now = time.time()
        stable = self._settings.dicom.stable_seconds
        with self._lock:
            due = [
                uid
                for uid, record in self._records.items()
                if record.state == "RECEIVING"
                and now - self._last_seen.get(uid, 0.0) >= stable
                and now >= self._retry_at.get(uid, 0.0)
            ]
        for uid in due:
            self._complete(uid)
        self._flush()

    def _complete(self, uid: str) -> None:
        with self._lock:
            record = self._records[uid].model_copy(deep=True)
        route = route_for(self._settings.dicom.routes, record)
        if route is None:
            record.state = "STORED"
            logger.info("series %s complete (%d instances): no rule matched", uid, record.received)
            self._commit(record)
            return
        request = JobRequest(
            model=route.model,
            series_uid=uid,
            postprocess=route.postprocess,
            exports=route.exports or None,
        )
        previous = record.jobs[-1] if record.jobs else None
        try:
            if previous is not None:
                self._supersede(previous.job_id)
            job_id, _ = self._submitter.submit(request, idempotency_key=run_key(record))
        except (ServiceUnavailable, Overloaded, RedisError, OSError) as exc:
            # No worker yet, the queue full or Redis away: the series waits and tries again.
            message = exc.message if isinstance(exc, FlaskModelError) else str(exc)
            logger.warning("series %s: submit failed (%s); retrying", uid, message)
            with self._lock:
                self._retry_at[uid] = time.time() + RETRY_SECONDS
                self._records[uid].error = message
                self._dirty.add(uid)
            return
        except FlaskModelError as exc:
            record.state = "ERROR"
            record.error = f"{exc.type}: {exc.message}"
            logger.warning("series %s: cannot start a job: %s", uid, record.error)
            self._commit(record)
            return
        if previous is not None:
            previous.superseded_by = job_id
        record.jobs.append(
            SeriesJobRun(
                job_id=job_id,
                model=route.model,
                instances=record.received,
                submitted_at=_stamp(time.time()),
            )
        )
        record.state, record.model, record.job_id, record.error = (
            "ROUTED",
            route.model,
            job_id,
            None,
        )
        logger.info(
            "series %s complete (%d instances): job %s on model %s",
            uid,
            record.received,
            job_id,
            route.model,
        )
        self._commit(record)

    def _supersede(self, job_id: str) -> None:
        """Cancel an earlier job of the series unless it has ended."""
        try:
            self._submitter.cancel(job_id)
            logger.info("job %s cancelled: superseded by a re-run", job_id)
        except (Conflict, JobNotFound) as exc:
            # It ended (or expired): the re-run's result simply replaces its result.
            logger.info("job %s not cancelled (%s); the re-run supersedes it", job_id, exc.message)

    def _commit(self, record: ReceivedSeries) -> None:
        """Take ``record`` as the series' new state, unless an instance arrived meanwhile (then
        the series stays RECEIVING and is completed again once stable)."""
        with self._lock:
            current = self._records[record.series_uid]
            if current.received != record.received:
                current.jobs = record.jobs  # keep the submitted job on record all the same
                current.job_id = record.job_id
                current.model = record.model
            else:
                self._records[record.series_uid] = record
                current = record
            self._retry_at.pop(record.series_uid, None)
            self._write_journal(current)
            self._dirty.add(record.series_uid)

    # -- persistence ---------------------------------------------------------------------------

    def _write_journal(self, record: ReceivedSeries) -> None:
        """Write the series' record durably (temp file, fsync, rename)."""
        self._journal.mkdir(parents=True, exist_ok=True)
        final = self._journal / f"{record.series_uid}.json"
        temp = final.with_suffix(".tmp")
        with temp.open("wb") as handle:
            handle.write(record.model_dump_json(exclude={"job"}).encode())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)

    def _flush(self) -> None:
        with self._lock:
            dirty = [self._records[uid].model_copy(deep=True) for uid in self._dirty]
            self._dirty.clear()
        for position, record in enumerate(dirty):
            try:
                self._mirror.save(record)
            except RedisError as exc:
                logger.warning("received-series mirror not written (%s); will retry", exc)
                with self._lock:
                    self._dirty.update(r.series_uid for r in dirty[position:])
                return

    def load(self) -> int:
        """Read the journal back (at start); returns how many series it holds. Received counts
        and arrival times come from the files, which may have changed while nothing ran."""
        if not self._journal.is_dir():
            return 0
        for path in sorted(self._journal.glob("*.json")):
            record = ReceivedSeries.model_validate_json(path.read_bytes())
            count, newest = self._files_of(record.series_uid)
            if count > record.received and record.state != "RECEIVING":
                logger.info("series %s: instances arrived while down; runs again", path.stem)
                record.state = "RECEIVING"
            record.received = count or record.received
            if newest:
                record.last_received_at = _stamp(newest)
            with self._lock:
                self._records[record.series_uid] = record
                self._last_seen[record.series_uid] = newest or time.time()
                self._dirty.add(record.series_uid)
        return len(self._records)

    def _files_of(self, uid: str) -> tuple[int, float]:
        """How many instances the series' folder holds, and the newest one's mtime."""
        folder = self._root / uid
        if not folder.is_dir():
            return 0, 0.0
        times = [p.stat().st_mtime for p in folder.iterdir() if p.suffix == ".dcm"]
        return len(times), max(times, default=0.0)

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Tick until ``stop`` is set; an unexpected error is logged and the loop goes on."""
        while not stop.wait(interval):
            try:
                self.tick()
            except Exception:
                logger.exception("series tracker tick failed")

    def records(self) -> dict[str, ReceivedSeries]:
        with self._lock:
            return {uid: r.model_copy(deep=True) for uid, r in self._records.items()}
