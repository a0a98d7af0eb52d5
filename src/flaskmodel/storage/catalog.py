"""``ModelCatalog``: the models the live workers serve, as a process that takes requests sees them;
the one cache of worker adverts (the job submitter and the synchronous predictor share it).

One snapshot of the live workers' heartbeats (``WorkerRegistry.live``), and each model's advert
merged from it once per snapshot (``merge``). Freshness rules:

- A lookup that finds its model (and the version it names) in a snapshot at most ``max_age`` old
  is served from it: ``JOB_MAX_AGE`` (0.1 s) for job submits, ``CALL_MAX_AGE`` (1 s) for
  synchronous calls and model metadata, which run per request on the hot path. Adverts change at
  heartbeat pace; reading and parsing every heartbeat per request cost more than the model.
- A refusal (unknown model or version: 404; no ready worker, or the model failed to load: 503)
  is decided on a fresh read, never on a snapshot.
- A snapshot past its age is refreshed by one caller at a time: while that read is in flight the
  other callers that find their model keep using the older snapshot (hundreds of requests finding
  it expired at once would otherwise all read every heartbeat together, and the slowest of those
  reads would miss the web tier's Redis timeout).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from flaskmodel.errors import ModelNotFound, ServiceUnavailable
from flaskmodel.schemas import ModelAdvert, WorkerHeartbeat
from flaskmodel.storage.workers import WorkerRegistry

#: Seconds a snapshot serves a job submit that finds its model and version in it.
JOB_MAX_AGE = 0.1
#: Seconds a snapshot serves a synchronous call (or a metadata read) that finds its model in it.
CALL_MAX_AGE = 1.0


@dataclass
class _Snapshot:
    """One read of the live workers and the adverts merged from it so far."""

    beats: list[WorkerHeartbeat]
    read_at: float  # time.monotonic() when the read started
    adverts: dict[str, ModelAdvert | None] = field(default_factory=dict)

    def advert(self, name: str) -> ModelAdvert | None:
        if name not in self.adverts:
            self.adverts[name] = merge(name, self.beats)
        return self.adverts[name]


class ModelCatalog:
    """Resolves model names to the adverts the live workers publish (see the module docstring)."""

    def __init__(self, registry: WorkerRegistry) -> None:
        self.registry = registry  # the heartbeats it reads (uncached, for health probes)
        # Replaced whole (never changed in place but for its merge memo): a reader holding one
        # snapshot sees its heartbeats and adverts agree, whatever another thread reads meanwhile.
        self._last = _Snapshot([], -math.inf)
        self._refresh = threading.Lock()  # held by the one caller refreshing an aged snapshot

    def live(self, *, max_age: float = 0.0) -> list[WorkerHeartbeat]:
        """The live workers' heartbeats: the snapshot if it was read at most ``max_age`` seconds
        ago (or, given a ``max_age``, while another caller refreshes it), else read now."""
        return self._current(max_age).beats

    def _current(self, max_age: float) -> _Snapshot:
        last = self._last
        if max_age <= 0:
            return self._read()
        if time.monotonic() - last.read_at <= max_age:
            return last
        if not self._refresh.acquire(blocking=False):
            return last if last.beats else self._read()  # another caller is refreshing it
        try:
            return self._read()
        finally:
            self._refresh.release()

    def _read(self) -> _Snapshot:
        read_at = time.monotonic()
        beats = self.registry.live()
        last = self._last
        same = len(beats) == len(last.beats) and all(
            a is b for a, b in zip(beats, last.beats, strict=True)
        )  # the registry parses a heartbeat once: unchanged ones are the same objects
        fresh = _Snapshot(beats, read_at, last.adverts if same else {})
        if read_at >= last.read_at:  # a slower concurrent read never replaces a newer one
            self._last = fresh
        return fresh

    def model(
        self, name: str, version: int | None = None, *, max_age: float = JOB_MAX_AGE
    ) -> ModelAdvert:
        """The model as the live workers serve it; 404 if unknown, 503 if no worker is up or the
        model failed to load. Served from a snapshot up to ``max_age`` old when it has the model
        (and ``version``, if given); otherwise read afresh (and then returned even without
        ``version``: the caller words that refusal)."""
        asked_at = time.monotonic()
        snapshot = self._current(max_age)
        advert = snapshot.advert(name)
        missing = advert is None or (version is not None and version not in advert.specs)
        if missing and snapshot.read_at < asked_at:  # not read for this call: read afresh
            snapshot = self._read()
            advert = snapshot.advert(name)
        if advert is not None:
            return advert
        beats = snapshot.beats
        if not any(w.ready for w in beats):
            raise ServiceUnavailable(
                f"no ready worker serves model '{name}' (workers up: {len(beats)})", retry_after=5
            )
        failed = [w.errors[name] for w in beats if name in w.errors]
        if failed:
            raise ServiceUnavailable(f"model '{name}' failed to load: {failed[0]}", retry_after=30)
        raise ModelNotFound(f"model '{name}' not found")


def merge(name: str, beats: list[WorkerHeartbeat]) -> ModelAdvert | None:
    """The model as served by the ready workers of ``beats``, or None if none serves it.

    Versions, specs and states are merged (a version is AVAILABLE where any worker serves it,
    else LOADING where any loads it, else END). ``latest`` — the default version — is the highest
    version every one of those workers has warm, so a new version becomes the default only once
    all of them have loaded it."""
    adverts = [beat.models[name] for beat in beats if beat.ready and name in beat.models]
    if not adverts:
        return None
    merged = adverts[0].model_copy(deep=True)
    everywhere = set(merged.versions)
    for advert in adverts[1:]:
        for version, spec in advert.specs.items():
            merged.specs.setdefault(version, spec)
        merged.versions = sorted(set(merged.versions) | set(advert.versions))
        everywhere &= set(advert.versions)
        for version, state in advert.states.items():
            merged.states[version] = _merge_state(merged.states.get(version), state)
    # Disjoint versions (a worker lagging far behind): the oldest worker's newest is safe.
    merged.latest = max(everywhere) if everywhere else min(a.latest for a in adverts)
    return merged


_STATE_RANK = {"AVAILABLE": 3, "LOADING": 2, "END": 1}


def _merge_state(mine: str | None, theirs: str) -> str:
    if mine is None:
        return theirs
    return max(mine, theirs, key=lambda state: _STATE_RANK.get(state, 0))
