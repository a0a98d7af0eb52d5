"""``SizeTuner``: the largest batch worth making of one model on this host, learned from the
batches the model runs.

Batching pays for small models (``tiny``: a batch of 32 costs about what one example costs) but
not always for big ones: the benchmark's convolutional CT model ran 10-15 % slower per slice at
batch 8-16 than at batch 1-2 on one 2-core CPU, and slightly faster on another. So the batcher
measures instead of assuming. Every model call is filed under the size of the ladder (1, 2, 4, ...,
``max_batch_size``) at or below its examples, as seconds per example. While more examples are
queued than a batch takes, some batches are cut at another size of the ladder (a probe: often
while a size has too few samples, rarely once all have them; at most twice the size cheapest per
example once two are known). The limit becomes the size with
the lowest median seconds per example when that beats what is in force (the limit, or while the
queue never fills it the largest size seen) by more than ``margin``.
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque

#: Recent samples kept per size (older ones roll out, so the choice follows the host's load).
SAMPLES = 9
#: Samples a size needs before it can be chosen.
MIN_SAMPLES = 5
#: Batches between probes while some size has too few samples, and once all have enough.
PROBE_EVERY_LEARNING = 2
PROBE_EVERY_SETTLED = 32
#: Gain over the size in force a size needs to take its place (0.05: 5 % less time per example).
MARGIN = 0.05


def ladder(max_size: int) -> list[int]:
    """1, 2, 4, ... below ``max_size``, then ``max_size``."""
    sizes = []
    size = 1
    while size < max_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_size]


class SizeTuner:
    """Chooses each batch's limit; used by one batcher's loop thread only."""

    def __init__(self, max_size: int, *, margin: float = MARGIN) -> None:
        self.sizes = ladder(max_size)
        self.limit = max_size
        self.margin = margin
        self._times: dict[int, deque[float]] = {s: deque(maxlen=SAMPLES) for s in self.sizes}
        self._medians: dict[int, float] = {}  # of the sizes with enough samples
        self._since_probe = 0
        self._turn = 0

    def next_limit(self, queued: int) -> int:
        """The most examples the next batch takes, ``queued`` being how many wait: the limit,
        or now and then another size of the ladder that the queue can fill (the one with the
        fewest samples, in turn among equals)."""
        reach = self._reach()
        candidates = [s for s in self.sizes if s != self.limit and s <= min(queued, reach)]
        if queued <= 1 or not candidates:
            return self.limit
        self._since_probe += 1
        fewest = min(len(self._times[s]) for s in candidates)
        every = PROBE_EVERY_LEARNING if fewest < MIN_SAMPLES else PROBE_EVERY_SETTLED
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

    def record(self, rows: int, seconds: float) -> None:
        """A model call of ``rows`` examples took ``seconds``; the limit may move."""
        if rows < 1:
            return
        size = self.sizes[bisect.bisect_right(self.sizes, rows) - 1]  # a bigger call: the top
        times = self._times[size]
        times.append(seconds / rows)
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
        if known[best] < known[in_force] * (1 - self.margin):
            self.limit = best
