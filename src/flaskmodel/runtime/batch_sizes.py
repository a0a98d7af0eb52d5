"""``SizeTuner``: the largest batch worth making of one model on this host, learned from the
batches the model runs.

Batching pays for small models (``tiny``: a batch of 32 costs about what one example costs) but
not always for big ones: the benchmark's convolutional CT model ran 10-15 % slower per slice at
batch 8-16 than at batch 1-2 on one 2-core CPU, and slightly faster on another. So the batcher
measures instead of assuming. Every model call is filed under the size of the ladder (1, 2, 4, ...,
``max_batch_size``) at or below its examples (with one loop; with two, below), as seconds per
example. While more examples are queued than a batch takes, some batches are cut at another size
of the ladder (a probe: often while a size has too few samples, rarely once all have them; at
most twice the size cheapest per example once two are known). The limit becomes the size with
the lowest median seconds per example when that beats what is in force (the limit, or while the
queue never fills it the largest size seen) by more than ``margin``, or by more than ``rise``
where that size is the bigger one: a bigger batch answers later, holds more memory, and has costs
its own time does not show (a batch of 16 CT slices touched 7 MB of new pages a slice, and the
worker's CPU per slice rose by up to half), so it must pay clearly. ``ct`` costs about the same
per slice at every size from 4 to 32 (within 5 %, each time), and with one margin the host's
noise walked its limit up to 16 in three of five harness runs, at 0.6-0.94x the slices/s of 4.

A slow model's batches run two at a time (the batcher's further loops), and a call's time then
depends on what runs beside it: a probe of one slice beside a batch of 32 took 47 ms a slice of
the CT model where a pair of either took 31-35, and a batch of 32 beside small probes looked
cheaper than it is, so the limit drifted up to the largest size. So while more than one loop
runs, batches come in runs of ``RUN`` of one size (a probe's or the limit's), each call is filed
under its run's size and charged its share of the time (an overlapping stretch split among the
calls running then), and a call that ran beside one of another run's size is not recorded.
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque
from dataclasses import dataclass

#: Recent samples kept per size (older ones roll out, so the choice follows the host's load).
SAMPLES = 9
#: Samples a size needs before it can be chosen.
MIN_SAMPLES = 5
#: Batches between probes while some size has too few samples, and once all have enough.
PROBE_EVERY_LEARNING = 2
PROBE_EVERY_SETTLED = 32
#: Gain over the size in force a smaller size needs to take its place (0.05: 5 % less time per
#: example), and a bigger size (it must pay clearly: the module docstring says why).
MARGIN = 0.05
RISE = 0.10
#: Batches in a row of one size while more than one loop runs (so the loops run that size).
RUN = 4


def ladder(max_size: int) -> list[int]:
    """1, 2, 4, ... below ``max_size``, then ``max_size``."""
    sizes = []
    size = 1
    while size < max_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_size]


@dataclass(eq=False)
class Running:
    """A model call on the tuner's clock: its size of the ladder, its share of the time so far,
    and whether a call of another size ran beside it."""

    size: int
    rows: int
    share: float = 0.0
    mixed: bool = False


class SizeTuner:
    """Chooses each batch's limit and times the model's calls; used under its batcher's lock."""

    def __init__(self, max_size: int, *, margin: float = MARGIN, rise: float = RISE) -> None:
        self.sizes = ladder(max_size)
        self.limit = max_size
        self.margin = margin
        self.rise = rise
        self._times: dict[int, deque[float]] = {s: deque(maxlen=SAMPLES) for s in self.sizes}
        self._medians: dict[int, float] = {}  # of the sizes with enough samples
        self._since_probe = 0
        self._turn = 0
        self._run = 0  # batches of ``_run_size`` still to come in a row
        self._run_size = max_size
        self._runs = False  # batches come in runs (more than one loop)
        self._running: list[Running] = []  # the calls on the clock
        self._ticked = 0.0  # when their shares were last brought up to date

    def next_limit(self, queued: int, loops: int = 1) -> int:
        """The most examples the next batch takes, ``queued`` being how many wait and ``loops``
        the batch loops running: the limit, or now and then another size of the ladder that the
        queue can fill (the one with the fewest samples, in turn among equals); with more than
        one loop, in runs of ``RUN`` batches of one size."""
        if self._run:
            self._run -= 1
            return self._run_size
        self._runs = loops > 1
        size = self._choose(queued)
        if self._runs:
            self._run, self._run_size = RUN - 1, size
        return size

    def _choose(self, queued: int) -> int:
        """The limit, or a probe. In runs, the limit is one of the sizes to learn (its batches
        give samples only in runs of their own), and runs probe back to back while learning."""
        reach = self._reach()
        candidates = [
            s for s in self.sizes if (self._runs or s != self.limit) and s <= min(queued, reach)
        ]
        if queued <= 1 or not candidates:
            return self.limit
        self._since_probe += 1
        fewest = min(len(self._times[s]) for s in candidates)
        learning = 1 if self._runs else PROBE_EVERY_LEARNING
        every = learning if fewest < MIN_SAMPLES else PROBE_EVERY_SETTLED
        if self._since_probe < every:
            return self.limit
        self._since_probe = 0
        least = [s for s in candidates if len(self._times[s]) == fewest]
        self._turn += 1
        return least[self._turn % len(least)]

    def _reach(self) -> int:
        """The largest size a probe may take: twice the size cheapest per example, once two sizes
        are known (any size before). Cost per example falls with the batch while the model's
        fixed cost dominates and rises once its work no longer fits the caches, so a size twice
        the best one's that costs more rules out those above it; and a probe of a slow model's
        big batch costs seconds (``ct``: 32 slices, 2-3 s of both cores on a host where batch 1
        is cheapest per slice)."""
        known = self._medians
        if len(known) < 2:
            return self.sizes[-1]
        return 2 * min(known, key=known.__getitem__)

    def begin(self, rows: int, limit: int, now: float) -> Running:
        """A model call of ``rows`` examples, cut at ``limit``, starts at ``now`` (monotonic
        seconds). In runs it is filed under its run's size, the limit it was cut at
        (what the queue let it take is that limit's doing), else under the size its examples
        reach."""
        self._tick(now)
        call = Running(self._size_of(limit if self._runs else rows), rows)
        for other in self._running:
            if other.size != call.size:
                other.mixed = call.mixed = True
        self._running.append(call)
        return call

    def end(self, call: Running, *, now: float, ok: bool = True) -> None:
        """``call`` is over at ``now``: recorded at its share of the time unless it failed or ran
        beside a call of another size."""
        self._tick(now)
        self._running.remove(call)
        if ok and not call.mixed and call.rows:
            self._add(call.size, call.share / call.rows)

    def _tick(self, now: float) -> None:
        if self._running:
            part = (now - self._ticked) / len(self._running)
            for call in self._running:
                call.share += part
        self._ticked = now

    def _size_of(self, rows: int) -> int:
        """The size of the ladder a call of ``rows`` examples is filed under."""
        return self.sizes[max(0, bisect.bisect_right(self.sizes, rows) - 1)]  # above: the top

    def _add(self, size: int, per_example: float) -> None:
        """A sample of ``size``; the limit may move."""
        times = self._times[size]
        times.append(per_example)
        if len(times) >= MIN_SAMPLES:
            self._medians[size] = statistics.median(times)
            self._decide()

    def per_example(self) -> dict[int, float]:
        """Median seconds per example of each size with enough samples."""
        return dict(self._medians)

    def _decide(self) -> None:
        known = self._medians
        if len(known) < 2:
            return
        # What is in force: batches at the limit, or, while the queue never fills the limit,
        # batches of what is queued (the largest size with samples).
        best = min(known, key=known.__getitem__)
        below = (s for s in known if s < self.limit)
        in_force = self.limit if self.limit in known else max(below, default=best)
        gain = self.rise if best > in_force else self.margin
        if known[best] < known[in_force] * (1 - gain):
            self.limit = best
