"""The web process's composition root: the collaborators views use, built once per app."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from celery import Celery
from flask import Flask, current_app

from flaskmodel.jobs import JobStore
from flaskmodel.settings import Settings
from flaskmodel.storage.kv import KeyValueStore
from flaskmodel.storage.redis import connect
from flaskmodel.storage.workers import WorkerRegistry
from flaskmodel.submission import JobSubmitter
from flaskmodel.worker.celery_app import make_celery

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    jobs: JobStore
    kv: KeyValueStore
    workers: WorkerRegistry
    submitter: JobSubmitter


def init_services(app: Flask, settings: Settings) -> None:
    client = connect(settings)
    celery = make_celery(settings)
    jobs = JobStore(client, ttl=settings.jobs.ttl_seconds)
    workers = WorkerRegistry(client, ttl=settings.worker.heartbeat_seconds * 3)
    app.extensions["flaskmodel"] = Services(
        settings=settings,
        redis=client,
        celery=celery,
        jobs=jobs,
        kv=KeyValueStore(
            client,
            default_ttl=settings.kv.default_ttl_seconds,
            max_value_bytes=settings.kv.max_value_bytes,
        ),
        workers=workers,
        submitter=JobSubmitter(jobs, workers, celery, queue=settings.worker.queue),
    )


def services() -> Services:
    found: Services = current_app.extensions["flaskmodel"]
    return found
