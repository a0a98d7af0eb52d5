"""``DynamicBatcher``: merges concurrent calls of one model version into model batches.

A batch goes at once when it is full (``max_batch_size`` examples), and no call waits longer
than ``max_batch_delay`` for others to join it. A call waits only while callers overlap (the
last batch merged two or more calls), and only until its batch holds as many calls as the last
one: a lone caller's call goes at once, so a single client pays no batching delay, a few callers
in step go once all of them are in, and calls already queued always join the batch. Either knob
at 0 turns merging off: ``predict`` then calls the model directly and ``submit`` runs calls one
at a time. Calls whose deadline passed before their batch ran are dropped, never computed; a
failing batch fails every call in it with the cause. ``BatchStats`` (``batch_stats``) records
batch sizes and queue waits, ``record_call`` each model call in the process's metrics. With
``tune``, batches take up to the size a ``SizeTuner`` found cheapest per example (at most
``max_batch_size``).

``call_here`` runs calls that came together on their caller's thread when nothing else is queued
or running, they are at least as many as the last batch held and the model is fast (median call
under ``CALL_HERE_SECONDS``): the worker's sync consumer answers the requests of one wake-up so,
without a future, a queue and two thread wake-ups each (a lone request's path is about 1 ms).

A call made with ``linger=False`` does not wait for others: its batch takes the calls already
queued and goes (series jobs: each is a model-sized batch already, and Celery runs one task at a
time per process).

A slow model gets more than one batch thread (``batch_threads``, as TF Serving's
``num_batch_threads``): while the median of its last calls takes ``SLOW_CALL_SECONDS`` or more,
a second loop runs, so two of its batches run at once; it stops once the median falls below half
that. One call of such a model leaves part of the cores idle (the CT model's keeps 1.8 of 2
busy), and a batch that forms while another runs no longer waits for it. A fast model keeps one
thread: for it a second one only halves the batches and doubles their fixed cost.

The batcher is itself a ``ModelRuntime``, shared by the jobs and synchronous calls of a version.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from flaskmodel.errors import DeadlineExceeded, ServiceUnavailable
from flaskmodel.runtime.base import ModelRuntime
from flaskmodel.runtime.batch_sizes import Running, SizeTuner
from flaskmodel.runtime.batch_stats import BatchStats, record_call
from flaskmodel.runtime.batching import (
    BatchKey,
    batch_key,
    batch_rows,
    merge_inputs,
    plan_batch,
    split_outputs,
)
from flaskmodel.schemas import ModelSpec

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
#: Median model call (seconds) from which a model gets its further batch threads.
SLOW_CALL_SECONDS = 0.02
#: Model calls the median is taken over.
SLOW_CALL_SAMPLES = 9
#: Most a model's median call may take for ``call_here`` to run calls on their caller's thread
#: (a caller that serves other models, as the sync consumer does, is held that long).
CALL_HERE_SECONDS = 0.005


@dataclass
class _Call:
    inputs: Outputs
    rows: int
    key: BatchKey
    deadline: float | None
    linger: bool = True
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[Outputs] = field(default_factory=Future)


class DynamicBatcher:
    """Wraps one loaded ``ModelRuntime``; calls from any thread, model calls on its loop threads
    (one; up to ``batch_threads`` for a slow model)."""

    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        max_batch_size: int,
        max_batch_delay: float,
        tune: bool = False,
        batch_threads: int = 1,
    ) -> None:
        self.runtime = runtime
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay
        self.enabled = max_batch_size > 0 and max_batch_delay > 0
        # ``tune``: batches up to the size that costs least per example (``SizeTuner``).
        self.tuner = SizeTuner(max_batch_size) if tune and self.enabled else None
        self.stats = BatchStats(None if self.tuner is None else self.tuner.limit)
        # Most loops running batches at once (slow models only); merging off: one at a time.
        self.batch_threads = max(1, batch_threads) if self.enabled else 1
        # A call, the calls of one ``submit_many``, or None (stop one loop).
        self._queue: queue.SimpleQueue[_Call | list[_Call] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the loops list and ``_closed``
        self._tune_lock = threading.Lock()  # the tuner and the recent call times
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._last_calls = 0  # calls merged into the last batch (of any loop)
        self._call_seconds: deque[float] = deque(maxlen=SLOW_CALL_SAMPLES)
        self._slow = False  # the median model call is slow (``_note_call``)
        self._median_call: float | None = None  # of the last ``SLOW_CALL_SAMPLES`` calls
        self._holding = 0  # loops holding calls, and ``call_here`` calls running (``_lock``)
        self._started = 0  # loops ever started (their names)

    @property
    def spec(self) -> ModelSpec:
        return self.runtime.spec

    def load(self) -> None:
        self.runtime.load()

    def predict(self, inputs: Outputs, *, linger: bool = True) -> Outputs:
        """The model's outputs for ``inputs``, merged with concurrent calls when enabled;
        ``linger=False``: merged only with calls already queued (no wait for the delay)."""
        if self.enabled:
            return self.submit(inputs, linger=linger).result()
        rows = batch_rows(inputs)
        self.stats.submitted(rows)
        started = time.perf_counter()
        try:
            outputs = self.runtime.predict(inputs)
        except Exception as exc:
            self.stats.batch(rows, [0.0], failed=True)
            record_call(self.spec, rows, [0.0], time.perf_counter() - started, exc)
            raise
        self.stats.batch(rows, [0.0])
        record_call(self.spec, rows, [0.0], time.perf_counter() - started)
        return outputs

    def submit(
        self, inputs: Outputs, *, deadline: float | None = None, linger: bool = True
    ) -> Future[Outputs]:
        """Queue a call; its future holds the outputs, or the error of its batch.

        ``deadline`` is epoch seconds: past it the call is dropped with ``DeadlineExceeded``.
        ``linger=False``: the call's batch does not wait for the delay.
        """
        call = _Call(inputs, batch_rows(inputs), batch_key(inputs), deadline, linger)
        self._put([call])
        return call.future

    def submit_many(self, many: list[Outputs]) -> list[Future[Outputs]]:
        """Queue several calls at once (the tensor jobs of one message): they go in the same
        batches, which wait for no later call."""
        calls = [_Call(i, batch_rows(i), batch_key(i), None, linger=False) for i in many]
        self._put(calls)
        return [call.future for call in calls]

    def call_here(
        self, calls: Sequence[tuple[Outputs, float | None]]
    ) -> list[Future[Outputs]] | None:
        """Run calls (inputs, deadline) that came together on this thread if their batches would
        go at once anyway: merging on, nothing queued or running, at least as many calls as the
        last batch held (no batch would wait for company) and the model's median call under
        ``CALL_HERE_SECONDS``. Their futures are done on return; None: submit them instead."""
        with self._lock:
            if not self._idle(len(calls)):
                return None
            self._holding += 1
        try:
            pending = [_Call(i, batch_rows(i), batch_key(i), d) for i, d in calls]
            futures = [call.future for call in pending]
            self.stats.submitted(sum(call.rows for call in pending), len(pending))
            while pending:
                limit = self._next_limit(pending)
                batch, pending = _take(pending, limit)
                self._run(batch, limit)
        finally:
            with self._lock:
                self._holding -= 1
        return futures

    def _idle(self, calls: int) -> bool:
        """Whether ``calls`` arriving now would go to the model at once, in batches no other
        call joins (under ``_lock``)."""
        return (
            self.enabled
            and not self._closed
            and self._holding == 0
            and not self._wants_company(calls)
            and self._median_call is not None
            and self._median_call < CALL_HERE_SECONDS
            and self._queue.empty()
        )

    def _wants_company(self, calls: int) -> bool:
        """Whether a batch of ``calls`` calls waits for others (the rule ``_collect`` explains)."""
        return calls < self._last_calls

    def _put(self, calls: list[_Call]) -> None:
        with self._lock:
            if self._closed:
                raise ServiceUnavailable(f"model '{self.spec.name}' is shutting down")
            if not self._threads:
                self._start_loop()
        self.stats.submitted(sum(call.rows for call in calls), len(calls))
        self._queue.put(calls[0] if len(calls) == 1 else calls)

    def _start_loop(self) -> None:
        """One more batch loop (under ``_lock``)."""
        name = f"batcher-{self.spec.name}" + (f"-{self._started}" if self._started else "")
        self._started += 1
        thread = threading.Thread(target=self._loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _note_call(self, seconds: float) -> None:
        """A model call's time: the model turns slow at a median of ``SLOW_CALL_SECONDS``, and
        fast again below half of it (so a host's noise does not start and stop loops)."""
        with self._tune_lock:
            self._call_seconds.append(seconds)
            if len(self._call_seconds) == SLOW_CALL_SAMPLES:
                median = self._median_call = statistics.median(self._call_seconds)
                if median >= SLOW_CALL_SECONDS:
                    self._slow = True
                elif median < SLOW_CALL_SECONDS / 2:
                    self._slow = False

    def _keep_looping(self) -> bool:
        """After a batch, with nothing held: a slow model gets its further loops; a further
        loop of a model no longer slow stops (False)."""
        with self._lock:
            if self._slow:
                while not self._closed and len(self._threads) < self.batch_threads:
                    self._start_loop()
                return True
            me = threading.current_thread()
            if me is self._threads[0]:
                return True
            self._threads.remove(me)
            return False

    @property
    def loops(self) -> int:
        """Batch loops running (more than one: batches of this model run at once)."""
        with self._lock:
            return len(self._threads)

    def close(self) -> None:
        """Stop the loops (queued calls fail with 503) and close the runtime."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join(10)
        self.runtime.close()

    def _loop(self) -> None:
        pending: list[_Call] = []
        stopping = False
        while not stopping:
            if not pending:
                first = self._queue.get()
                if first is None:
                    break
                _add(pending, first)
                with self._lock:
                    self._holding += 1
            limit = self._next_limit(pending)
            stopping = self._collect(pending, limit)
            batch, pending = _take(pending, limit)
            self._run(batch, limit)
            if pending:
                continue
            with self._lock:
                self._holding -= 1
            if self.batch_threads > 1 and not self._keep_looping():
                return
        for call in pending:
            call.future.set_exception(ServiceUnavailable(f"model '{self.spec.name}' shut down"))

    def _next_limit(self, pending: list[_Call]) -> int:
        """The most examples the next batch takes. The tuner may probe any size that what waits
        can fill: the head's examples held here and the calls still in the queue (a size above
        the limit too, which the limit alone would never let the batch reach)."""
        if not self.enabled:
            return 1
        if self.tuner is None:
            return self.max_batch_size
        held = sum(c.rows for c in pending if c.key == pending[0].key)
        with self._tune_lock:
            return self.tuner.next_limit(held + self._queue.qsize(), len(self._threads))

    def _collect(self, pending: list[_Call], limit: int) -> bool:
        """Wait for more calls until the head's batch of ``limit`` examples is full or its delay
        is up; True: stop."""
        if not self.enabled:
            return False
        send_at = pending[0].enqueued + self.max_batch_delay
        while True:
            _, full = plan_batch([(c.key, c.rows) for c in pending], limit)
            if full:
                return False
            # Calls already queued join at once, even when the head's delay is up: under load
            # every head is older than the delay, and waiting only for new arrivals would run
            # one call per batch exactly when batching matters most. A lone caller is not
            # charged for batching it cannot get: with nothing else queued and the last batch a
            # single call, the batch goes now. Once callers overlap (the last batch merged calls),
            # a batch waits up to the delay for others to join, but only until it holds as many
            # calls as the last batch did: a few callers in step all join within a round trip,
            # and waiting out the delay for a caller who is not there charged each of them it.
            lingering = self._wants_company(len(pending)) and all(c.linger for c in pending)
            remaining = send_at - time.monotonic() if lingering else 0.0
            try:
                if remaining > 0:
                    call = self._queue.get(timeout=remaining)
                else:
                    call = self._queue.get_nowait()
            except queue.Empty:
                return False
            if call is None:
                return True
            _add(pending, call)

    def _run(self, batch: list[_Call], limit: int) -> None:
        now = time.time()
        live = []
        for call in batch:
            if not call.future.set_running_or_notify_cancel():
                continue  # its caller cancelled it
            if call.deadline is not None and call.deadline <= now:
                self.stats.expired()
                call.future.set_exception(
                    DeadlineExceeded(f"model '{self.spec.name}': deadline passed before its batch")
                )
                continue
            live.append(call)
        if not live:
            return
        started = time.monotonic()
        waits = [started - c.enqueued for c in live]
        rows = sum(c.rows for c in live)
        self._last_calls = len(live)
        with self._tune_lock:
            running = None if self.tuner is None else self.tuner.begin(rows, limit, started)
        try:
            outputs = self.runtime.predict(merge_inputs([c.inputs for c in live]))
            parts = split_outputs(outputs, [c.rows for c in live])
        except Exception as exc:  # noqa: BLE001 - each caller gets the cause, none is lost
            ended = time.monotonic()
            self._timed(running, ended, ok=False)
            record_call(self.spec, rows, waits, ended - started, exc)
            logger.warning(
                "model %s: batch of %d calls (%d examples) failed: %s",
                self.spec.name,
                len(live),
                rows,
                exc,
            )
            self.stats.batch(rows, waits, failed=True)
            for call in live:
                call.future.set_exception(exc)
            return
        ended = time.monotonic()
        self._note_call(ended - started)
        self.stats.batch(rows, waits, limit=self._timed(running, ended))
        record_call(self.spec, rows, waits, ended - started)
        for call, part in zip(live, parts, strict=True):
            call.future.set_result(part)

    def _timed(self, running: Running | None, ended: float, *, ok: bool = True) -> int | None:
        """A call ends on the tuner's clock at ``ended``; the limit after it (None: no tuner)."""
        if running is None or self.tuner is None:
            return None
        with self._tune_lock:
            self.tuner.end(running, now=ended, ok=ok)
            return self.tuner.limit


def _add(pending: list[_Call], item: _Call | list[_Call]) -> None:
    if isinstance(item, list):
        pending.extend(item)
    else:
        pending.append(item)


def _take(pending: list[_Call], limit: int) -> tuple[list[_Call], list[_Call]]:
    """The head's next batch (at most ``limit`` examples) and the calls left."""
    chosen, _ = plan_batch([(c.key, c.rows) for c in pending], limit)
    taken = set(chosen)
    return [pending[i] for i in chosen], [c for i, c in enumerate(pending) if i not in taken]
