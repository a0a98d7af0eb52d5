"""``flaskmodel dicom``: the front door process's composition root.

Builds the Redis client, the job submitter and the series tracker, reads the tracker's journal
back, starts the receiver (Storage SCP + STOW-RS) with the tracker as its ``on_stored``, and ticks
the tracker until SIGTERM or SIGINT; then it stops taking associations and requests, finishes the
running ones and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from flaskmodel.gateway.receiver import start_receiver
from flaskmodel.gateway.tracker import SeriesTracker
from flaskmodel.jobs.broker import make_celery
from flaskmodel.jobs.submit import build_submitter
from flaskmodel.scheduling import apply_cpu_policy
from flaskmodel.settings import Settings
from flaskmodel.storage.received_series import ReceivedSeriesStore
from flaskmodel.storage.redis import connect

logger = logging.getLogger(__name__)


def run_gateway(settings: Settings, *, http_socket: Path | None = None) -> int:
    """Run the front door in the foreground until a stop signal; the exit code."""
    apply_cpu_policy(settings.cpu_policy)
    client = connect(settings)
    submitter = build_submitter(settings, client, make_celery(settings))
    mirror = ReceivedSeriesStore(client, ttl=settings.series.results_ttl_seconds)
    tracker = SeriesTracker(settings, submitter, mirror)
    known = tracker.load()
    if known:
        logger.info("series tracker: %d series on record", known)
    if not settings.dicom.routes:
        logger.warning("no dicom.routes: received series are stored, no job starts")
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping the DICOM front door", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    receiver = start_receiver(settings, tracker.on_stored, unix_socket=http_socket)
    try:
        tracker.run(stop)
    finally:
        receiver.stop()
        tracker.tick()  # flush what the last instances changed
        client.close()
    return 0
