"""``SyncPredictor``: the web side of synchronous calls (TF Serving ``:predict``, V2 ``infer``).

Resolves the model and version from what the ready workers advertise (the process's
``ModelCatalog``, at most ``CALL_MAX_AGE`` old: 404 unknown, 503 when no worker serves it, both
decided on a fresh read), sends one request frame to ``flaskmodel:sync:<model>`` through the
process's ``SyncChannel`` and waits for its reply until the deadline. Under gevent the wait
blocks only the request's greenlet; no polling. A deadline that passes is a 504; the worker
drops the request if it has not started it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import redis

from flaskmodel.codecs import raw
from flaskmodel.errors import DeadlineExceeded, ModelNotFound, error_class
from flaskmodel.jobs.records import JobRecords
from flaskmodel.schemas import ModelAdvert, ModelSpec
from flaskmodel.settings import BatchingSettings
from flaskmodel.storage.catalog import CALL_MAX_AGE, ModelCatalog
from flaskmodel.storage.gcra import Ticket
from flaskmodel.sync import frames
from flaskmodel.sync.channel import SyncChannel

# Redis answers BLPOP timeouts on its own clock (about 0.1 s granularity); never ask for 0,
# which would mean "forever".
_MIN_WAIT = 0.001


class SyncPredictor:
    """Sends validated tensors to the workers and waits for their outputs."""

    def __init__(
        self, client: redis.Redis, catalog: ModelCatalog, settings: BatchingSettings
    ) -> None:
        self._catalog = catalog
        self._settings = settings
        # Job waits block on this process's blocking client (no socket timeout of the web tier's).
        self._ends = JobRecords(client)
        self._channel = SyncChannel(client, queue_ttl=int(settings.max_timeout_seconds) + 1)

    def model(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> tuple[ModelAdvert, ModelSpec]:
        """The model as advertised and the spec of the requested (or default) version."""
        advert = self._catalog.model(name, version, max_age=CALL_MAX_AGE)
        try:
            return advert, _spec(advert, version, label)
        except ModelNotFound:
            advert = self._catalog.model(name, version, max_age=0)  # refused on a fresh read
            return advert, _spec(advert, version, label)

    def advert(self, name: str) -> ModelAdvert:
        """The model as the ready workers advertise it (at most ``CALL_MAX_AGE`` old); 404 / 503
        otherwise (decided on a fresh read)."""
        return self._catalog.model(name, max_age=CALL_MAX_AGE)

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
        ticket: Ticket | None = None,
    ) -> dict[str, np.ndarray]:
        """The model's outputs for ``inputs`` (validated against ``spec`` by the caller).
        ``ticket``: the request's rate-limit count, made with the push unless made before;
        ``RateLimited`` when it refuses the request (which then never reaches a worker)."""
        if ticket is not None and ticket.verdict is not None:
            ticket.admit()  # counted before: a refused request goes no further
            ticket = None
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
        queue = frames.sync_queue_key(spec.name)
        decoded = self._channel.call(queue, request_id, frame, budget, ticket)
        if ticket is not None:
            ticket.admit()  # counted with the push: raises when it refused the call
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
        return self._ends.wait_end(job_id, budget)


def _spec(advert: ModelAdvert, version: int | None, label: str | None) -> ModelSpec:
    """The spec of the version ``label`` names, or ``version``, or the default one."""
    name = advert.name
    if label is not None:
        if label not in advert.version_labels:
            known = sorted(advert.version_labels) or "none"
            raise ModelNotFound(f"model '{name}' has no version label '{label}' (labels: {known})")
        version = advert.version_labels[label]
    resolved = advert.latest if version is None else version
    if resolved not in advert.specs:
        raise ModelNotFound(f"model '{name}' has no version {resolved} (has {advert.versions})")
    return advert.specs[resolved]
