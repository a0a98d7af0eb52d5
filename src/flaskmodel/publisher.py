"""``JobPublisher``: publishes tensor jobs, several to a broker message when submits overlap.

A web process under load admits many jobs at once, and one Celery publish per job (and one
delivery, ack and set of Redis round trips per job on the worker) is what bounded the job API.
Each (model, priority) has a line of jobs waiting to be published. The first submit to find no
publish in flight leads: it publishes the line (up to ``max_jobs`` per message) in one message;
whoever arrives while a publish is in flight waits for it, and the first of them then leads the
next message. While jobs of a line arrive back to back (the last publish was under
``BUSY_SECONDS`` ago), a leader first waits ``window`` seconds for others to join (Triton's
queue delay, ``batching.max_batch_delay_ms``); an isolated submit publishes at once. The window
matters because clients that wait for their results resubmit one by one: without it every
message would carry one job, and every job pay the broker's and the worker's cost per message.

Every submit returns only once the message that carries its job is published, or raises what that
publish raised (then the submitter removes its job and answers 503): a client never holds the id
of a job that no message carries. Works under gevent (monkey-patched locks block greenlets) and
with threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# A line whose last publish is more recent than this is busy: its leaders wait for others.
BUSY_SECONDS = 0.05

# (job ids, model, priority): publishes one message carrying the jobs.
Publish = Callable[[list[str], str, int], None]


@dataclass
class _Waiting:
    job_id: str
    woken: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this submit publishes the next message of its line
    error: BaseException | None = None


class JobPublisher:
    """Coalesces concurrent publishes of one model and priority into one message."""

    def __init__(self, publish: Publish, *, max_jobs: int, window: float = 0.0) -> None:
        self._publish = publish
        self._max = max(1, max_jobs)
        self._window = window if self._max > 1 else 0.0
        self._lock = threading.Lock()
        self._lines: dict[tuple[str, int], list[_Waiting]] = {}
        self._last: dict[tuple[str, int], float] = {}  # when each line last published

    def publish(self, job_id: str, model: str, priority: int) -> None:
        """Return once a message carrying ``job_id`` is published; raise what its publish
        raised otherwise."""
        me = _Waiting(job_id)
        line_key = (model, priority)
        with self._lock:
            line = self._lines.get(line_key)
            if line is None:  # nothing in flight: publish at once
                self._lines[line_key] = line = []
                me.lead = True
            line.append(me)
        if not me.lead:
            me.woken.wait()
        if me.lead:
            busy = time.monotonic() - self._last.get(line_key, -BUSY_SECONDS) < BUSY_SECONDS
            if busy and self._window:
                time.sleep(self._window)  # others join the line meanwhile (a gevent yield)
            self._publish_next(line_key)
        if me.error is not None:
            raise me.error

    def _publish_next(self, line_key: tuple[str, int]) -> None:
        """Publish the jobs at the head of the line (the leader's first), then hand the lead to
        the first one left, or close the line."""
        with self._lock:
            line = self._lines[line_key]
            batch = line[: self._max]
            del line[: self._max]
        error: BaseException | None = None
        try:
            self._publish([w.job_id for w in batch], *line_key)
        except Exception as exc:  # noqa: BLE001 - raised again in every submit of the batch
            error = exc
        with self._lock:
            self._last[line_key] = time.monotonic()
            following = line[0] if line else None
            if following is None:
                del self._lines[line_key]
            else:
                following.lead = True
        for waiting in batch:
            waiting.error = error
            waiting.woken.set()
        if following is not None:
            following.woken.set()
