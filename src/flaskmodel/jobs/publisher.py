"""``JobPublisher``: publishes tensor jobs, several to a broker message when submits overlap.

A web process under load admits many jobs at once, and one Celery publish per job (and one
delivery, ack and set of Redis round trips per job on the worker) is what bounded the job API.
Each (model, priority) has a line of jobs waiting to be published. The first submit to find no
publish in flight leads: it publishes the line (up to ``max_jobs`` per message) in one message;
whoever arrives while a publish is in flight waits for it, and the first of them then leads the
next message. When other jobs of the model are unfinished (``crowded``: the admission count,
read in the submit's own round trip, is above one), a leader first waits up to ``window``
seconds (``jobs.publish_window_ms``) for the line to fill before it publishes; a job with no
other unfinished job of its model is published at once. The window is what makes
messages carry many jobs: clients that wait for their results resubmit as their jobs finish,
spread over time, and without it every message would carry one or two jobs, each paying the
broker's and the worker's cost per message (on the 2-core bench machine a 10 ms window took the
job API from about 200 to 630 round trips/s).

Every submit returns only once the message that carries its job is published, or raises what that
publish raised (then the submitter removes its job and answers 503): a client never holds the id
of a job that no message carries. Works under gevent (monkey-patched locks block greenlets) and
with threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

# (job ids, model, priority): publishes one message carrying the jobs.
Publish = Callable[[list[str], str, int], None]


@dataclass
class _Waiting:
    job_id: str
    woken: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this submit publishes the next message of its line
    error: BaseException | None = None


@dataclass
class _Line:
    waiting: list[_Waiting] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)  # max_jobs are waiting


class JobPublisher:
    """Coalesces concurrent publishes of one model and priority into one message."""

    def __init__(self, publish: Publish, *, max_jobs: int, window: float = 0.0) -> None:
        self._publish = publish
        self._max = max(1, max_jobs)
        self._window = window if self._max > 1 else 0.0
        self._lock = threading.Lock()
        self._lines: dict[tuple[str, int], _Line] = {}

    def publish(self, job_id: str, model: str, priority: int, *, crowded: bool = False) -> None:
        """Return once a message carrying ``job_id`` is published; raise what its publish
        raised otherwise. ``crowded``: other jobs of the model are unfinished (a leader waits
        for company)."""
        me = _Waiting(job_id)
        line_key = (model, priority)
        with self._lock:
            line = self._lines.get(line_key)
            if line is None:  # nothing in flight: this submit leads the next message
                self._lines[line_key] = line = _Line()
                me.lead = True
            line.waiting.append(me)
            if len(line.waiting) >= self._max:
                line.full.set()
        if not me.lead:
            me.woken.wait()
        if me.lead:
            if crowded and self._window:
                line.full.wait(self._window)  # others join meanwhile (a gevent yield)
            self._publish_next(line_key)
        if me.error is not None:
            raise me.error

    def _publish_next(self, line_key: tuple[str, int]) -> None:
        """Publish the jobs at the head of the line (the leader's first), then hand the lead to
        the first one left, or close the line."""
        with self._lock:
            line = self._lines[line_key]
            batch = line.waiting[: self._max]
            del line.waiting[: self._max]
            line.full.clear()
        error: BaseException | None = None
        try:
            self._publish([w.job_id for w in batch], *line_key)
        except Exception as exc:  # noqa: BLE001 - raised again in every submit of the batch
            error = exc
        with self._lock:
            following = line.waiting[0] if line.waiting else None
            if following is None:
                del self._lines[line_key]
            else:
                following.lead = True
                if len(line.waiting) >= self._max:
                    line.full.set()
        for waiting in batch:
            waiting.error = error
            waiting.woken.set()
        if following is not None:
            following.woken.set()
