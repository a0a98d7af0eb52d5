"""``BatchStats``: the counters a batcher keeps, as its status reports them."""

from __future__ import annotations

import threading

from flaskmodel.runtime.batch_stats import WAIT_BUCKETS, BatchStats


def test_a_snapshot_holds_every_count() -> None:
    stats = BatchStats(limit=8)
    stats.submitted(3)
    stats.submitted(5, calls=2)
    stats.expired()
    stats.batch(4, [0.0005, 0.0007, 0.001])
    stats.batch(4, [2.0], failed=True, limit=16)
    view = stats.snapshot()
    assert (view.requests, view.items, view.expired) == (3, 8, 1)
    assert (view.batches, view.failed_batches, view.batch_sizes) == (2, 1, {4: 2})
    assert view.batch_size_limit == 16
    assert view.queue_wait_seconds_sum == sum([0.0005, 0.0007, 0.001, 2.0])
    assert view.queue_wait_seconds_max == 2.0
    # Each wait in the first bucket whose bound it does not pass (a bound is inclusive).
    assert list(view.queue_wait_buckets) == [str(b) for b in WAIT_BUCKETS] + ["+Inf"]
    assert view.queue_wait_buckets["0.0005"] == 1
    assert view.queue_wait_buckets["0.001"] == 2
    assert view.queue_wait_buckets["1.0"] == 0
    assert view.queue_wait_buckets["+Inf"] == 1
    assert sum(view.queue_wait_buckets.values()) == 4


def test_a_snapshot_is_a_copy() -> None:
    stats = BatchStats()
    stats.batch(1, [0.0])
    first = stats.snapshot()
    stats.batch(1, [0.0])
    assert first.batches == 1
    assert first.batch_sizes == {1: 1}
    assert stats.snapshot().batches == 2


def test_counts_from_many_threads_add_up() -> None:
    stats = BatchStats()

    def work() -> None:
        for _ in range(2000):
            stats.submitted(2)
            stats.batch(2, [0.003])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    view = stats.snapshot()
    assert (view.requests, view.items, view.batches) == (8000, 16000, 8000)
    assert view.queue_wait_buckets["0.005"] == 8000
