"""``DynamicBatcher`` timing semantics with a recording model (no Redis, no TensorFlow)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from flaskmodel.errors import DeadlineExceeded, ServiceUnavailable
from flaskmodel.runtime.batch_stats import BatchStats
from flaskmodel.runtime.batcher import (
    CALL_HERE_SECONDS,
    SLOW_CALL_SAMPLES,
    DynamicBatcher,
)
from flaskmodel.schemas import ModelSpec, TensorSpec

Factory = Callable[[int, float], DynamicBatcher]
SPEC = ModelSpec(
    name="rec",
    version=1,
    inputs=[TensorSpec(name="x", dtype="float32", shape=[None, None])],
    outputs=[TensorSpec(name="y", dtype="float32", shape=[None, None])],
)


class Recorder:
    """A model that doubles its input, remembers each call, and fails on the value 7."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, int]] = []  # (rows, calling thread)
        self.delay = delay
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0  # model calls that ran at the same time

    @property
    def spec(self) -> ModelSpec:
        return SPEC

    def load(self) -> None:
        return None

    def close(self) -> None:
        return None

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append((len(inputs["x"]), threading.get_ident()))
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        try:
            if self.delay:
                time.sleep(self.delay)
        finally:
            with self._lock:
                self._running -= 1
        if np.any(inputs["x"] == 7):
            raise ValueError("poisoned row in the batch")
        return {"y": inputs["x"] * 2}


def rows(n: int, start: float = 0.0, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.arange(n * width, dtype=np.float32).reshape(n, width) + start}


def overlap(batcher: DynamicBatcher, recorder: Recorder, calls: int = 2) -> None:
    """Put ``batcher`` in the state callers that overlap leave it in (its last batch merged
    ``calls`` calls), where a call waits for others; forget that batch."""
    for future in batcher.submit_many([rows(1)] * calls):
        future.result(timeout=2)
    recorder.calls.clear()
    batcher.stats = BatchStats()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make(recorder: Recorder) -> Iterator[Factory]:
    made: list[DynamicBatcher] = []

    def build(size: int, delay: float) -> DynamicBatcher:
        batcher = DynamicBatcher(recorder, max_batch_size=size, max_batch_delay=delay)
        made.append(batcher)
        if batcher.enabled:
            overlap(batcher, recorder)
        return batcher

    yield build
    for batcher in made:
        batcher.close()


def test_full_batch_goes_at_once(make: Factory, recorder: Recorder) -> None:
    batcher = make(4, 5.0)
    started = time.monotonic()
    futures = [batcher.submit(rows(1, 10 * i)) for i in range(4)]
    results = [f.result(timeout=2) for f in futures]
    assert time.monotonic() - started < 1.0  # far below the 5 s delay
    assert [r for r, _ in recorder.calls] == [4]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], rows(1, 10 * i)["x"] * 2)
    stats = batcher.stats.snapshot()
    assert stats.batch_sizes == {4: 1} and stats.requests == 4 and stats.items == 4


def test_no_call_waits_longer_than_the_delay(make: Factory, recorder: Recorder) -> None:
    batcher = make(100, 0.15)
    overlap(batcher, recorder, calls=3)  # two calls are fewer than the last batch's: they wait
    started = time.monotonic()
    first = batcher.submit(rows(1))
    time.sleep(0.05)
    second = batcher.submit(rows(2, 100))
    first.result(timeout=2)
    elapsed = time.monotonic() - started
    second.result(timeout=2)
    assert 0.14 <= elapsed < 0.4  # sent when the first call's delay ran out, not later
    assert [r for r, _ in recorder.calls] == [3]  # the second joined the first's batch
    stats = batcher.stats.snapshot()
    assert 0.14 <= stats.queue_wait_seconds_max < 0.4
    assert sum(stats.queue_wait_buckets.values()) == 2


def test_off_when_either_knob_is_zero(make: Factory, recorder: Recorder) -> None:
    for size, delay in ((0, 1.0), (8, 0.0)):
        recorder.calls.clear()
        batcher = make(size, delay)
        assert not batcher.enabled
        out = batcher.predict(rows(3))
        np.testing.assert_array_equal(out["y"], rows(3)["x"] * 2)
        assert recorder.calls == [(3, threading.get_ident())]  # in the caller's thread
        futures = [batcher.submit(rows(1)) for _ in range(3)]
        for future in futures:
            future.result(timeout=2)
        assert [r for r, _ in recorder.calls[1:]] == [1, 1, 1]  # one call at a time, unmerged


def test_failing_batch_fails_every_caller_with_the_cause(make: Factory, recorder: Recorder) -> None:
    batcher = make(8, 0.2)
    good = batcher.submit(rows(2))
    bad = batcher.submit({"x": np.array([[7.0, 7.0]], np.float32)})
    other = batcher.submit(rows(1, 50))
    for future in (good, bad, other):
        with pytest.raises(ValueError, match="poisoned row"):
            future.result(timeout=2)
    assert [r for r, _ in recorder.calls] == [4]
    assert batcher.stats.snapshot().failed_batches == 1
    # The batcher keeps serving afterwards.
    np.testing.assert_array_equal(batcher.predict(rows(1))["y"], rows(1)["x"] * 2)


def test_expired_calls_are_dropped_not_computed(make: Factory, recorder: Recorder) -> None:
    batcher = make(8, 0.05)
    gone = batcher.submit(rows(1), deadline=time.time() + 0.01)
    with pytest.raises(DeadlineExceeded):
        gone.result(timeout=2)
    assert recorder.calls == []
    stats = batcher.stats.snapshot()
    assert stats.expired == 1 and stats.batches == 0


def test_different_signatures_are_not_merged(make: Factory, recorder: Recorder) -> None:
    batcher = make(8, 0.1)
    narrow = batcher.submit(rows(1, width=2))
    wide = batcher.submit(rows(2, width=3))
    also_narrow = batcher.submit(rows(1, 5, width=2))
    assert narrow.result(timeout=2)["y"].shape == (1, 2)
    assert wide.result(timeout=2)["y"].shape == (2, 3)
    np.testing.assert_array_equal(also_narrow.result(timeout=2)["y"], rows(1, 5)["x"] * 2)
    assert sorted(r for r, _ in recorder.calls) == [2, 2]


def test_jobs_and_sync_calls_share_the_batch(make: Factory, recorder: Recorder) -> None:
    batcher = make(16, 0.2)
    sync = batcher.submit(rows(1))
    job_result: dict[str, np.ndarray] = {}
    job = threading.Thread(target=lambda: job_result.update(batcher.predict(rows(4, 100))))
    job.start()
    job.join(2)
    sync.result(timeout=2)
    assert [r for r, _ in recorder.calls] == [5]
    np.testing.assert_array_equal(job_result["y"], rows(4, 100)["x"] * 2)


def test_a_lone_caller_pays_no_delay_and_overlapping_callers_wait_for_company() -> None:
    # One client at a time: nothing else is queued and the last batch was a single call, so the
    # call goes at once instead of waiting for company that is not coming.
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch_size=32, max_batch_delay=5.0)
    try:
        started = time.monotonic()
        for i in range(3):
            batcher.predict(rows(1, i))
        assert time.monotonic() - started < 1.0  # far below one 5 s delay
        assert [r for r, _ in recorder.calls] == [1, 1, 1]
        # Once calls overlap (a batch merged two), a call waits for others again.
        overlap(batcher, recorder)
        batcher.max_batch_delay = 0.15
        first = batcher.submit(rows(1))
        time.sleep(0.05)
        second = batcher.submit(rows(1, 50))
        first.result(timeout=2)
        second.result(timeout=2)
        assert [r for r, _ in recorder.calls] == [2]
    finally:
        batcher.close()


def test_callers_in_step_go_as_soon_as_all_of_them_have_joined() -> None:
    # Two clients that each wait for their answer before calling again: once their calls
    # overlapped, each batch waits for as many calls as the last one held, not for the delay
    # (which charged every call of two or four such clients the whole delay).
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch_size=32, max_batch_delay=5.0)
    try:
        overlap(batcher, recorder)  # the last batch merged two calls
        started = time.monotonic()
        for i in range(3):
            first = batcher.submit(rows(1, 10 * i))
            time.sleep(0.02)  # the second caller's request is a little behind
            second = batcher.submit(rows(1, 10 * i + 5))
            first.result(timeout=6)
            second.result(timeout=6)
        assert time.monotonic() - started < 1.0  # far below one 5 s delay
        assert [r for r, _ in recorder.calls] == [2, 2, 2]
        # One of the two callers gone: the call left waits out the delay for company.
        batcher.max_batch_delay = 0.15
        started = time.monotonic()
        batcher.predict(rows(1))
        assert 0.14 <= time.monotonic() - started < 1.0
        assert [r for r, _ in recorder.calls] == [2, 2, 2, 1]
    finally:
        batcher.close()


def test_calls_that_came_together_run_on_their_callers_thread_when_nothing_else_waits() -> None:
    recorder = Recorder()
    here = threading.get_ident()
    batcher = DynamicBatcher(recorder, max_batch_size=4, max_batch_delay=5.0)
    try:
        assert batcher.call_here([(rows(1), None)]) is None  # the model's speed is not known yet
        for i in range(SLOW_CALL_SAMPLES):
            batcher.predict(rows(1, 100 + 10 * i))
        assert {thread for _, thread in recorder.calls} != {here}
        recorder.calls.clear()
        alone = batcher.call_here([(rows(2, 100), time.time() + 5)])
        assert alone is not None and alone[0].done()
        np.testing.assert_array_equal(alone[0].result()["y"], rows(2, 100)["x"] * 2)
        assert recorder.calls == [(2, here)]
        stats = batcher.stats.snapshot()
        assert stats.requests == SLOW_CALL_SAMPLES + 1 and stats.batch_sizes[2] == 1
        # Calls of one wake-up: batches of at most max_batch_size, all on this thread; an
        # expired one is dropped, a poisoned batch fails only its own calls.
        recorder.calls.clear()
        calls = [(rows(1, 10 * i), time.time() + 5) for i in range(5)]
        calls[1] = (rows(1), time.time() - 1)
        calls[4] = (rows(1, 7), time.time() + 5)
        futures = batcher.call_here(calls)
        assert futures is not None and all(f.done() for f in futures)
        assert recorder.calls == [(3, here), (1, here)]
        for i in (0, 2, 3):
            np.testing.assert_array_equal(futures[i].result()["y"], rows(1, 10 * i)["x"] * 2)
        assert isinstance(futures[1].exception(), DeadlineExceeded)
        assert isinstance(futures[4].exception(), ValueError)
        # A batch running on the loop: the calls would join the next batch, so they are
        # submitted.
        recorder.delay = 0.3
        busy = batcher.submit(rows(1, 200))
        time.sleep(0.1)
        assert batcher.call_here([(rows(1), None)]) is None
        busy.result(timeout=2)
        recorder.delay = 0.0
        # Callers overlap (the last batch merged 3 calls): fewer would wait for company in the
        # loop, as many go at once.
        overlap(batcher, recorder, calls=3)
        assert batcher.call_here([(rows(1), None)] * 2) is None
        assert batcher.call_here([(rows(1), None)] * 3) is not None
    finally:
        batcher.close()
    assert batcher.call_here([(rows(1), None)]) is None  # closed


def test_a_slow_model_or_one_without_merging_never_runs_calls_here() -> None:
    slow = Recorder(delay=CALL_HERE_SECONDS * 2)
    batcher = DynamicBatcher(slow, max_batch_size=32, max_batch_delay=0.005)
    unmerged = DynamicBatcher(Recorder(), max_batch_size=0, max_batch_delay=0.0)
    try:
        for i in range(SLOW_CALL_SAMPLES):
            batcher.predict(rows(1, 100 + 10 * i))
            unmerged.predict(rows(1, 100 + 10 * i))
        assert batcher.call_here([(rows(1), None)]) is None
        assert unmerged.call_here([(rows(1), None)]) is None
    finally:
        batcher.close()
        unmerged.close()


def test_calls_queued_behind_a_busy_model_share_the_next_batch() -> None:
    # Under load every call waits longer than the delay while the model runs: those already
    # queued must still merge (this once ran one call per batch exactly when load was high).
    recorder = Recorder(delay=0.2)
    batcher = DynamicBatcher(recorder, max_batch_size=32, max_batch_delay=0.005)
    try:
        first = batcher.submit(rows(1))
        time.sleep(0.05)  # the first call's batch is running now
        backlog = [batcher.submit(rows(1, 10 * i)) for i in range(10)]
        for future in [first, *backlog]:
            future.result(timeout=5)
    finally:
        batcher.close()
    assert [r for r, _ in recorder.calls] == [1, 10]


def test_a_call_that_does_not_linger_goes_without_the_delay() -> None:
    # Series jobs send whole batches with linger=False: no wait for company that never comes,
    # but calls already queued still join them.
    recorder = Recorder(delay=0.2)
    batcher = DynamicBatcher(recorder, max_batch_size=32, max_batch_delay=5.0)
    try:
        started = time.monotonic()
        out = batcher.predict(rows(3), linger=False)
        assert time.monotonic() - started < 1.0  # far below the 5 s delay
        np.testing.assert_array_equal(out["y"], rows(3)["x"] * 2)
        busy = batcher.submit(rows(1), linger=False)
        time.sleep(0.05)  # its batch is running now
        queued = batcher.submit(rows(1, 100))  # would wait 5 s on its own
        whole = batcher.submit(rows(4, 200), linger=False)
        for future in (busy, queued, whole):
            future.result(timeout=2)
        assert time.monotonic() - started < 2.0
        np.testing.assert_array_equal(whole.result()["y"], rows(4, 200)["x"] * 2)
    finally:
        batcher.close()
    assert [r for r, _ in recorder.calls] == [3, 1, 5]


def test_a_slow_model_runs_two_batches_at_once() -> None:
    # As TF Serving's num_batch_threads: once a model's median call is slow, a batch that forms
    # while another runs goes to the model at once, on a second loop.
    recorder = Recorder(delay=0.1)
    batcher = DynamicBatcher(recorder, max_batch_size=4, max_batch_delay=0.005, batch_threads=2)
    try:
        for i in range(SLOW_CALL_SAMPLES):
            batcher.predict(rows(1, 100 + 10 * i))
            assert batcher.loops == (1 if i < SLOW_CALL_SAMPLES - 1 else 2)
        assert recorder.most_at_once == 1
        futures = [batcher.submit(rows(1, 10 * i)) for i in range(8)]
        for i, future in enumerate(futures):
            np.testing.assert_array_equal(future.result(timeout=5)["y"], rows(1, 10 * i)["x"] * 2)
        assert recorder.most_at_once == 2
        assert len({thread for _, thread in recorder.calls}) == 2
        assert sum(r for r, _ in recorder.calls) == SLOW_CALL_SAMPLES + 8
        stats = batcher.stats.snapshot()
        assert stats.requests == stats.items == SLOW_CALL_SAMPLES + 8
        # A model that is no longer slow is back to one loop.
        recorder.delay = 0.0
        for i in range(20 * SLOW_CALL_SAMPLES):
            batcher.predict(rows(1, 100 + 10 * i))
            if batcher.loops == 1:
                break
        assert batcher.loops == 1
        recorder.delay = 0.1
        for i in range(SLOW_CALL_SAMPLES):
            batcher.predict(rows(1, 100 + 10 * i))
        assert batcher.loops == 2
        # Closing stops both loops, after the calls queued before it (as with one loop).
        busy = [batcher.submit(rows(4, 100 + 100 * i), linger=False) for i in range(3)]
        time.sleep(0.03)
        threads = list(batcher._threads)
    finally:
        batcher.close()
    assert [f.exception(timeout=5) for f in busy] == [None, None, None]
    assert len(threads) == 2 and not any(thread.is_alive() for thread in threads)
    with pytest.raises(ServiceUnavailable):
        batcher.submit(rows(1))


def test_a_fast_model_and_one_without_merging_keep_one_batch_thread() -> None:
    fast = Recorder()
    batcher = DynamicBatcher(fast, max_batch_size=4, max_batch_delay=0.005, batch_threads=2)
    unmerged = Recorder(delay=0.05)
    one_at_a_time = DynamicBatcher(unmerged, max_batch_size=0, max_batch_delay=0.0, batch_threads=2)
    try:
        for i in range(3 * SLOW_CALL_SAMPLES):
            batcher.predict(rows(1, 100 + 10 * i))
        count = 2 * SLOW_CALL_SAMPLES
        futures = [one_at_a_time.submit(rows(1, 100 + 10 * i)) for i in range(count)]
        for future in futures:
            future.result(timeout=5)
        assert batcher.loops == 1 and one_at_a_time.loops == 1
        assert fast.most_at_once == 1 and unmerged.most_at_once == 1
    finally:
        batcher.close()
        one_at_a_time.close()
