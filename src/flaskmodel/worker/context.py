"""The worker's per-process composition root: Redis, job store, model repository, runner.

Built after fork in each pool process (``worker_process_init``), or in the main process for the
solo pool (``worker_init``). Models load and warm there (each behind its dynamic batcher), before
the process's heartbeat says ready; then the synchronous consumer starts taking requests, and the
heartbeat thread rescans the models (new versions load and warm in the background) and keeps
``flaskmodel:worker:<id>`` (with the version states and the batchers' stats) fresh.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from flaskmodel import heap
from flaskmodel.jobs.store import JobStore
from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.runtime.gpu import configure_gpus
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.schemas import WorkerHeartbeat
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import connect, connect_frames
from flaskmodel.storage.workers import WorkerRegistry
from flaskmodel.worker.runner import JobRunner, Requeue
from flaskmodel.worker.sync_consumer import SyncConsumer

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    repository: ModelRepository
    registry: WorkerRegistry
    runner: JobRunner
    consumer: SyncConsumer
    worker_id: str
    ready: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(
        cls, settings: Settings, models: list[str] | None = None, requeue: Requeue | None = None
    ) -> WorkerContext:
        client = connect(settings)
        jobs = JobStore(client, ttl=settings.jobs.ttl_seconds)
        repository = ModelRepository.from_settings(settings, only=models)
        # Consumer, reply sender and a spare: the consumer's BRPOP holds one connection.
        frames_client = connect_frames(settings, max_connections=4)
        return cls(
            settings=settings,
            redis=client,
            jobs=jobs,
            repository=repository,
            registry=WorkerRegistry(client, ttl=settings.worker.heartbeat_seconds * 3),
            runner=JobRunner(settings, jobs, repository, client, requeue),
            consumer=SyncConsumer(
                frames_client, repository, reply_ttl=settings.batching.reply_ttl_seconds
            ),
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
        )

    def start(self) -> None:
        """Load and warm every model, serve synchronous calls, keep the heartbeat going."""
        settings = self.settings
        RECORDER.start(
            lambda: connect(settings), settings.metrics.flush_seconds, settings.redis_url()
        )
        self.beat()  # live (not ready) while models load
        if self.settings.runtime.backend == "savedmodel":
            configure_gpus(self.settings.runtime.gpu_memory_limit_mb)  # before TF touches a GPU
        self.errors = self.repository.load_all()
        heap.freeze()  # TensorFlow and the loaded models stay for the process's life
        self.ready = not self.errors
        self.consumer.start()
        self.beat()
        thread = threading.Thread(target=self._beat_loop, name="flaskmodel-heartbeat", daemon=True)
        thread.start()

    def heartbeat(self) -> WorkerHeartbeat:
        return WorkerHeartbeat(
            worker_id=self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            ready=self.ready,
            sent_at=time.time(),
            models=self.repository.adverts() if self.ready else {},
            errors=self.errors,
        )

    def beat(self) -> None:
        try:
            self.registry.beat(self.heartbeat())
        except redis.RedisError as exc:
            logger.warning("heartbeat failed: %s", exc)

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.settings.worker.heartbeat_seconds):
            try:
                self.repository.refresh()  # new versions load in the background, gone ones end
            except Exception:
                logger.exception("model rescan failed")
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self.consumer.stop()
        try:
            self.registry.remove(self.worker_id)
        except redis.RedisError as exc:
            logger.warning("could not remove heartbeat: %s", exc)
        self.repository.close()  # batchers answer or fail (503) what they still hold
        self.consumer.close()  # ... and those answers go out before the process ends
        RECORDER.stop()  # pool processes leave through os._exit: no atexit flush


_current: WorkerContext | None = None


def install(
    settings: Settings, models: list[str] | None = None, requeue: Requeue | None = None
) -> WorkerContext:
    """Build and start this process's context (serving ``models``; None: every model found;
    ``requeue`` publishes a series job's next chunk)."""
    global _current  # noqa: PLW0603 - one context per process, set by the worker signals
    _current = WorkerContext.build(settings, models, requeue)
    _current.start()
    return _current


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("worker context not installed in this process")
    return _current


def uninstall(**_: Any) -> None:
    global _current  # noqa: PLW0603
    if _current is not None:
        _current.stop()
        _current = None
