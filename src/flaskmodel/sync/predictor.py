"""``SyncPredictor``: the web side of synchronous calls (TF Serving ``:predict``, V2 ``infer``).

Resolves the model and version from what the ready workers advertise (404 unknown, 503 when no
worker serves it), sends one request frame to ``flaskmodel:sync:<model>`` through the process's
``SyncChannel`` and waits for its reply until the deadline. Under gevent the wait blocks only the
request's greenlet; no polling. A deadline that passes is a 504; the worker drops the request if
it has not started it.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import redis

from flaskmodel.codecs import raw
from flaskmodel.errors import DeadlineExceeded, ModelNotFound, error_class
from flaskmodel.jobs.store import done_key
from flaskmodel.jobs.submit import JobSubmitter
from flaskmodel.schemas import ModelAdvert, ModelSpec
from flaskmodel.settings import BatchingSettings
from flaskmodel.sync import frames
from flaskmodel.sync.channel import SyncChannel

logger = logging.getLogger(__name__)

# Redis answers BLPOP timeouts on its own clock (about 0.1 s granularity); never ask for 0,
# which would mean "forever".
_MIN_WAIT = 0.001
# Reading and parsing every heartbeat per call cost more than the model; adverts change at
# heartbeat pace anyway, so each web process reuses what it read for this long.
ADVERT_CACHE_SECONDS = 1.0


class SyncPredictor:
    """Sends validated tensors to the workers and waits for their outputs."""

    def __init__(
        self, client: redis.Redis, submitter: JobSubmitter, settings: BatchingSettings
    ) -> None:
        self._redis = client
        self._submitter = submitter
        self._settings = settings
        self._adverts: dict[str, tuple[float, ModelAdvert]] = {}
        self._refreshing: set[str] = set()
        self._channel = SyncChannel(client, queue_ttl=int(settings.max_timeout_seconds) + 1)

    def model(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> tuple[ModelAdvert, ModelSpec]:
        """The model as advertised and the spec of the requested (or default) version."""
        advert = self.advert(name)
        if label is not None:
            if label not in advert.version_labels:
                known = sorted(advert.version_labels) or "none"
                raise ModelNotFound(
                    f"model '{name}' has no version label '{label}' (labels: {known})"
                )
            version = advert.version_labels[label]
        resolved = advert.latest if version is None else version
        if resolved not in advert.specs:
            raise ModelNotFound(f"model '{name}' has no version {resolved} (has {advert.versions})")
        return advert, advert.specs[resolved]

    def advert(self, name: str) -> ModelAdvert:
        """The model as the ready workers advertise it (cached briefly); 404 / 503 otherwise.

        One caller refreshes an expired entry while the others keep using it: under load,
        hundreds of requests finding it expired at once would otherwise all read every heartbeat
        together, and the slowest of those reads would miss the web tier's Redis timeout.
        """
        cached = self._adverts.get(name)
        if cached is not None and (cached[0] > time.monotonic() or name in self._refreshing):
            return cached[1]
        self._refreshing.add(name)
        try:
            advert = self._submitter.model(name)  # 404 / 503 are never cached
        finally:
            self._refreshing.discard(name)
        self._adverts[name] = (time.monotonic() + ADVERT_CACHE_SECONDS, advert)
        return advert

    def timeout(self, requested: float | None = None) -> float:
        """Seconds a call may take: ``requested`` (capped) or the configured default."""
        if requested is None or requested <= 0:
            return self._settings.sync_timeout_seconds
        return min(requested, self._settings.max_timeout_seconds)

    def predict(
        self,
        spec: ModelSpec,
        inputs: dict[str, np.ndarray],
        *,
        outputs: list[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """The model's outputs for ``inputs`` (validated against ``spec`` by the caller)."""
        budget = self.timeout(timeout)
        request_id = os.urandom(16).hex()  # as unique as a uuid4, cheaper to make
        deadline = time.time() + budget
        frame = raw.encode(
            {
                "id": request_id,
                "model": spec.name,
                "version": spec.version,
                "deadline": deadline,
                "outputs": outputs,
                "reply_to": self._channel.reply_list,
            },
            inputs,
        )
        decoded = self._channel.call(frames.sync_queue_key(spec.name), request_id, frame, budget)
        if decoded is None:
            raise DeadlineExceeded(
                f"model '{spec.name}' version {spec.version} did not answer within {budget:g} s"
            )
        error = decoded.header.get("error")
        if error is not None:
            raise error_class(error.get("type", "error"))(error.get("message", "model call failed"))
        return decoded.tensors

    def close(self) -> None:
        """Stop the process's sync channel (its sender and receiver)."""
        self._channel.close()

    def wait_job(self, job_id: str, timeout: float) -> str | None:
        """Block until job ``job_id`` reaches a terminal state or ``timeout`` passes; the end
        notice popped (give it back with ``JobStore.get(woken_by=...)``), or None."""
        budget = min(max(timeout, _MIN_WAIT), self._settings.max_timeout_seconds)
        popped = self._redis.blpop([done_key(job_id)], timeout=budget)
        return None if popped is None else str(popped[1])
