"""``SizeTuner`` on its own (recorded timings), and the batcher it steers under concurrent callers
with models whose cost per example falls or grows with the batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from flaskmodel.runtime.base import ModelRuntime
from flaskmodel.runtime.batch_sizes import (
    MARGIN,
    MIN_SAMPLES,
    PROBE_EVERY_SETTLED,
    RISE,
    RUN,
    SizeTuner,
    ladder,
)
from flaskmodel.runtime.batcher import DynamicBatcher
from flaskmodel.runtime.savedmodel import SavedModelRuntime
from tests.runtime.test_batcher import Recorder


def test_the_ladder_is_powers_of_two_then_the_maximum() -> None:
    assert ladder(32) == [1, 2, 4, 8, 16, 32]
    assert ladder(12) == [1, 2, 4, 8, 12]
    assert ladder(1) == [1]


def record(tuner: SizeTuner, rows: int, seconds: float) -> None:
    """A model call of ``rows`` examples (one loop) that took ``seconds``."""
    tuner.end(tuner.begin(rows, tuner.limit, now=0.0), now=seconds)


def feed(tuner: SizeTuner, per_example: dict[int, float], rounds: int = MIN_SAMPLES) -> None:
    for _ in range(rounds):
        for size, seconds in per_example.items():
            record(tuner, size, seconds * size)


def test_the_limit_moves_to_the_size_cheapest_per_example() -> None:
    tuner = SizeTuner(32)
    feed(tuner, {1: 0.050, 2: 0.048, 4: 0.055, 8: 0.060, 32: 0.065})
    assert tuner.limit == 2
    assert tuner.per_example()[2] == 0.048


def test_a_gain_within_the_margin_keeps_the_limit() -> None:
    tuner = SizeTuner(32)
    feed(tuner, {1: 0.0300, 32: 0.0310})  # 3 % cheaper at 1: not worth a change
    assert tuner.limit == 32
    feed(tuner, {1: 0.0300, 32: 0.0330}, rounds=9)  # 9 % cheaper: moves
    assert tuner.limit == 1


def test_a_bigger_size_must_beat_the_limit_by_the_larger_rise() -> None:
    tuner = SizeTuner(32)
    feed(tuner, {4: 0.030, 16: 0.033})  # 16 in force, 4 cheaper by 9 %: the limit falls to 4
    assert tuner.limit == 4
    feed(tuner, {16: 0.0275}, rounds=9)  # 16 now 8 % cheaper than 4: not worth a bigger batch
    assert tuner.limit == 4
    feed(tuner, {16: 0.026}, rounds=9)  # 13 % cheaper: it pays clearly
    assert tuner.limit == 16
    assert RISE > MARGIN


def test_batching_that_pays_keeps_the_top_size() -> None:
    tuner = SizeTuner(32)
    feed(tuner, {1: 0.26e-3, 2: 0.14e-3, 4: 0.07e-3, 8: 0.04e-3, 16: 0.02e-3, 32: 0.01e-3})
    assert tuner.limit == 32


def test_calls_are_filed_under_the_ladder_size_at_or_below_them() -> None:
    tuner = SizeTuner(32)
    for _ in range(MIN_SAMPLES):
        record(tuner, 12, 0.12)  # 8 <= 12 < 16
        record(tuner, 40, 0.40)  # one call above the maximum: filed under it
    assert tuner.per_example() == {8: 0.01, 32: 0.01}


def test_while_the_queue_never_fills_the_limit_the_largest_size_seen_is_in_force() -> None:
    tuner = SizeTuner(32)  # e.g. 16 clients: batches of 8-15, never 32
    feed(tuner, {2: 0.050, 8: 0.060})
    assert tuner.limit == 2


def test_probes_cut_batches_only_when_more_wait_than_they_take() -> None:
    tuner = SizeTuner(32)
    assert [tuner.next_limit(1) for _ in range(10)] == [32] * 10  # a lone call: no probe
    limits = [tuner.next_limit(6) for _ in range(40)]
    probes = [size for size in limits if size != 32]
    assert probes and set(probes) <= {1, 2, 4}  # sizes 6 queued calls can fill
    assert len(probes) == 20  # every 2nd batch while sizes lack samples


def test_once_every_size_has_samples_probes_are_rare() -> None:
    tuner = SizeTuner(8)
    feed(tuner, {1: 0.09, 2: 0.08, 4: 0.07, 8: 0.01})
    limits = [tuner.next_limit(100) for _ in range(PROBE_EVERY_SETTLED * 4)]
    assert tuner.limit == 8
    assert sum(size != 8 for size in limits) == 4


def test_probes_reach_no_further_than_twice_the_cheapest_size() -> None:
    tuner = SizeTuner(32)
    # Sizes up to 16 learned (16 clients), batch 1 cheapest per example: with 64 waiting, no
    # probe tries 32 (it would cost seconds a slice-sized model), only 2.
    feed(tuner, {1: 0.050, 2: 0.055, 4: 0.058, 8: 0.060, 16: 0.064})
    assert tuner.limit == 1
    probes = {tuner.next_limit(64) for _ in range(PROBE_EVERY_SETTLED * 4)} - {1}
    assert probes == {2}
    # Where bigger batches pay, the reach grows with the cheapest size.
    tuner = SizeTuner(32)
    feed(tuner, {1: 0.050, 2: 0.030, 4: 0.020})
    assert tuner.limit == 32  # 4, the largest size seen, is in force: no change
    assert {tuner.next_limit(64) for _ in range(8)} == {32, 8}  # 8: the fewest samples
    feed(tuner, {8: 0.010})
    assert {tuner.next_limit(64) for _ in range(8)} == {32, 16}


def test_with_two_loops_batches_come_in_runs_of_one_size_probing_back_to_back() -> None:
    tuner = SizeTuner(32)
    limits = [tuner.next_limit(64, loops=2) for _ in range(RUN * 12)]
    runs = [limits[i : i + RUN] for i in range(0, len(limits), RUN)]
    assert all(len(set(run)) == 1 for run in runs), runs
    # While learning, every run is of a size with the fewest samples, the limit's included.
    assert {run[0] for run in runs} == set(ladder(32))


def test_the_clock_charges_each_call_its_share_and_drops_calls_beside_another_size() -> None:
    tuner = SizeTuner(32)
    tuner.next_limit(64, loops=2)  # runs: a call is filed under the limit it was cut at
    for start in range(MIN_SAMPLES):
        t = 10.0 * start
        a = tuner.begin(8, 8, now=t)
        b = tuner.begin(6, 8, now=t + 0.5)  # the queue held 6: still a call of the run of 8
        tuner.end(a, now=t + 1.0)  # 0.5 s alone, then half of 0.5 s: 0.75 s for 8
        tuner.end(b, now=t + 1.3125)  # half of 0.5 s, then 0.3125 s alone: 0.5625 s for 6
        big = tuner.begin(32, 32, now=t + 2)
        probe = tuner.begin(1, 1, now=t + 2.1)  # beside a call of another size: neither counts
        tuner.end(probe, now=t + 2.2)
        tuner.end(big, now=t + 4)
        failed = tuner.begin(1, 1, now=t + 5)
        tuner.end(failed, ok=False, now=t + 5.5)
    assert tuner.per_example() == {8: pytest.approx(0.75 / 8)}


def test_one_loop_files_a_call_under_the_size_its_examples_reach_at_its_whole_time() -> None:
    tuner = SizeTuner(32)
    for start in range(MIN_SAMPLES):
        call = tuner.begin(12, 32, now=float(start))  # a limit of 32, 12 queued: filed under 8
        tuner.end(call, now=start + 0.24)
    assert tuner.per_example() == {8: pytest.approx(0.02)}


class Costly(Recorder):
    """A model whose call sleeps ``fixed + per_example * (1 + growth * (rows - 1)) * rows``
    seconds and doubles its input."""

    def __init__(self, fixed: float, per_example: float, growth: float) -> None:
        super().__init__()
        self.fixed, self.per_example, self.growth = fixed, per_example, growth

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(inputs["x"])
        time.sleep(self.fixed + self.per_example * (1 + self.growth * (rows - 1)) * rows)
        return {"y": inputs["x"] * 2}


def tuned(model: ModelRuntime) -> DynamicBatcher:
    return DynamicBatcher(model, max_batch_size=32, max_batch_delay=0.002, tune=True)


ONE_ROW = {"x": np.ones((1, 2), dtype=np.float32)}


def load(batcher: DynamicBatcher, x: dict[str, np.ndarray], callers: int, seconds: float) -> None:
    """``callers`` threads call ``batcher`` with ``x`` for ``seconds``; each answer is checked
    against the model called alone."""
    stop = time.monotonic() + seconds
    want = batcher.runtime.predict(x)

    def call() -> None:
        while time.monotonic() < stop:
            got = batcher.predict(x)
            for name, value in want.items():
                np.testing.assert_allclose(got[name], value, rtol=1e-5)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def drive(
    model: ModelRuntime, callers: int, seconds: float, x: dict[str, np.ndarray] | None = None
) -> DynamicBatcher:
    """``load`` on a new tuned batcher of ``model``, closed after."""
    batcher = tuned(model)
    load(batcher, x or ONE_ROW, callers, seconds)
    batcher.close()
    return batcher


def test_a_model_slower_per_example_in_bigger_batches_gets_small_batches() -> None:
    # 2 ms an example alone, 12 % more per example with each example added to the batch.
    batcher = drive(Costly(0.0, 0.002, 0.12), callers=16, seconds=4)
    assert batcher.tuner is not None
    assert batcher.tuner.limit <= 2
    assert batcher.stats.snapshot().batch_size_limit == batcher.tuner.limit


def test_a_model_whose_batches_cost_as_much_as_one_example_keeps_big_batches() -> None:
    batcher = drive(Costly(0.003, 0.00005, 0.0), callers=64, seconds=3)
    assert batcher.tuner is not None
    assert batcher.tuner.limit >= 16


def test_the_real_tiny_model_keeps_big_batches(models_root: Path) -> None:
    # tiny (the demo MLP, real TensorFlow): a batch of 32 costs about what one example costs.
    runtime = SavedModelRuntime("tiny", 1, models_root / "tiny" / "1")
    runtime.load()
    x = {"x": np.linspace(0, 1, 32, dtype=np.float32).reshape(1, 32)}
    batcher = drive(runtime, callers=48, seconds=4, x=x)
    assert batcher.tuner is not None
    assert batcher.tuner.limit >= 16, batcher.tuner.per_example()


def test_the_limit_climbs_back_when_big_batches_pay_again() -> None:
    # First big batches cost more per example (the limit falls to 1-2), then the host changes and
    # a batch costs what one example costs: probes above the limit must find that out.
    model = Costly(0.0, 0.002, 0.12)
    batcher = tuned(model)
    tuner = batcher.tuner
    assert tuner is not None

    def load_until(callers: int, done: Callable[[], bool], most: float) -> None:
        """``load`` in rounds of a second until ``done`` or ``most`` seconds."""
        give_up = time.monotonic() + most
        while not done() and time.monotonic() < give_up:
            load(batcher, ONE_ROW, callers, 1)

    try:
        load_until(16, lambda: tuner.limit <= 2, most=10)
        assert tuner.limit <= 2, tuner.per_example()
        model.fixed, model.per_example, model.growth = 0.003, 0.00005, 0.0
        load_until(64, lambda: tuner.limit >= 16, most=15)
        assert tuner.limit >= 16, tuner.per_example()
    finally:
        batcher.close()


class Crowded(Recorder):
    """A model whose call sleeps ``per_example * (1 + growth * (rows - 1)) * rows`` seconds, or
    ``crowded`` times that when it starts beside a bigger call (as a small TensorFlow call beside
    a big one whose threads hold the cores), and doubles its input."""

    def __init__(self, per_example: float, growth: float, crowded: float) -> None:
        super().__init__()
        self.per_example, self.growth, self.crowded = per_example, growth, crowded
        self._beside: list[int] = []  # the rows of the calls running

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(inputs["x"])
        with self._lock:
            slowed = self.crowded if any(r > rows for r in self._beside) else 1.0
            self._beside.append(rows)
        try:
            time.sleep(self.per_example * (1 + self.growth * (rows - 1)) * rows * slowed)
        finally:
            with self._lock:
                self._beside.remove(rows)
        return {"y": inputs["x"] * 2}


def test_a_slow_model_on_two_loops_is_tuned_by_what_sizes_cost_beside_their_own() -> None:
    # 12 ms an example alone, 2 % more per example with each example added (16: 30 % dearer
    # than 1), a call beside a bigger one 1.6 times as long. Timed by their calls, the sizes
    # below 16 were probed beside batches of 16 and looked dearer, so the limit stayed at 16.
    batcher = DynamicBatcher(
        Crowded(0.012, 0.02, 1.6), max_batch_size=16, max_batch_delay=0.002, tune=True,
        batch_threads=2,
    )  # fmt: skip
    tuner = batcher.tuner
    assert tuner is not None
    try:
        load(batcher, ONE_ROW, callers=64, seconds=12)
        assert batcher.loops == 2
    finally:
        batcher.close()
    assert tuner.limit <= 4, tuner.per_example()
