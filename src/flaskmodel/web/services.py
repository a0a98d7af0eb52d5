"""The web process's composition root: the collaborators route handlers use, built once per app
(``create_app`` keeps them in ``app.extensions["flaskmodel"]``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis
from celery import Celery

from flaskmodel.jobs.broker import make_celery
from flaskmodel.jobs.series_results import SeriesResults
from flaskmodel.jobs.store import JobStore
from flaskmodel.jobs.submit import JobSubmitter, build_catalog, build_submitter
from flaskmodel.settings import Settings
from flaskmodel.storage.catalog import ModelCatalog
from flaskmodel.storage.kv import KeyValueStore
from flaskmodel.storage.received_series import ReceivedSeriesStore
from flaskmodel.storage.redis import connect, connect_frames
from flaskmodel.storage.workers import WorkerRegistry
from flaskmodel.sync.predictor import SyncPredictor
from flaskmodel.web.apikeys import KeyRing
from flaskmodel.web.ratelimit import RateLimiter


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    jobs: JobStore
    kv: KeyValueStore
    workers: WorkerRegistry
    catalog: ModelCatalog  # the one cache of the workers' adverts (submits and sync calls)
    submitter: JobSubmitter
    sync: SyncPredictor
    keys: KeyRing
    rate_limiter: RateLimiter | None
    series_results: SeriesResults
    received: ReceivedSeriesStore
    # Set when this gunicorn worker got SIGTERM (``draining``): /readyz answers 503.
    draining: threading.Event = field(default_factory=threading.Event)


def web_side(settings: Settings) -> Settings:
    """``settings`` as the web tier's Redis client and publisher use them: a command times out
    after ``redis.web_socket_timeout`` (under a second: a hung Redis gets a quick 503)."""
    section = settings.redis.model_copy(
        update={"socket_timeout": settings.redis.web_socket_timeout}
    )
    return settings.model_copy(update={"redis": section})


def build_services(settings: Settings) -> Services:
    client = connect(web_side(settings))
    celery = make_celery(web_side(settings))
    jobs = JobStore(client, ttl=settings.jobs.ttl_seconds)
    catalog = build_catalog(settings, client)
    submitter = build_submitter(settings, client, celery, jobs=jobs, catalog=catalog)
    # Synchronous calls share the process's sync channel (two connections); every job wait
    # (`?wait=`, `Prefer: wait`) holds one for its BLPOP: up to one per gevent connection.
    frames_client = connect_frames(settings, max_connections=settings.web.worker_connections + 8)
    return Services(
        settings=settings,
        redis=client,
        celery=celery,
        jobs=jobs,
        kv=KeyValueStore(
            client,
            default_ttl=settings.kv.default_ttl_seconds,
            max_value_bytes=settings.kv.max_value_bytes,
        ),
        workers=catalog.registry,
        catalog=catalog,
        submitter=submitter,
        sync=SyncPredictor(frames_client, catalog, settings.batching),
        keys=KeyRing(settings.security),
        rate_limiter=_rate_limiter(client, settings),
        series_results=SeriesResults(client, ttl=settings.series.results_ttl_seconds),
        received=ReceivedSeriesStore(client, ttl=settings.series.results_ttl_seconds),
    )


def _rate_limiter(client: redis.Redis, settings: Settings) -> RateLimiter | None:
    security = settings.security
    if security.rate_limit_per_second <= 0:
        return None
    return RateLimiter(
        client, per_second=security.rate_limit_per_second, burst=security.rate_limit_burst
    )
