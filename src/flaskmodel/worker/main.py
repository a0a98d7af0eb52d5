"""``flaskmodel worker``: a Celery worker whose processes load the models after fork."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.settings import Settings
from flaskmodel.worker import context
from flaskmodel.worker.celery_app import make_celery, model_queue
from flaskmodel.worker.lifecycle import MainProcessHooks, check_limits
from flaskmodel.worker.tasks import register_tasks

logger = logging.getLogger(__name__)


def queues(settings: Settings) -> list[str]:
    """The base queue and one queue per served model (as found at start-up)."""
    models = settings.worker.models or ModelRepository.from_settings(settings).names()
    return [settings.worker.queue, *(model_queue(settings.worker.queue, m) for m in models)]


def run_worker(settings: Settings, *, hostname: str = "flaskmodel@%h") -> None:
    """Run a worker in the foreground until it is told to stop."""
    settings.redis_url()  # refuse to start without a Redis to talk to
    app = make_celery(settings)
    check_limits(app, settings)  # refuse a lease shorter than the hard limit
    register_tasks(app)
    MainProcessHooks(settings).connect()

    def init_process(**_: Any) -> None:
        # After fork, in the pool process: TensorFlow loads here, never in the parent.
        context.install(settings)

    if settings.worker.pool == "solo":
        signals.worker_init.connect(init_process, weak=False)
        signals.worker_shutdown.connect(context.uninstall, weak=False)
    else:
        signals.worker_process_init.connect(init_process, weak=False)
        signals.worker_process_shutdown.connect(context.uninstall, weak=False)
    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log.level}",
            f"--concurrency={settings.worker.concurrency}",
            f"--pool={settings.worker.pool}",
            f"--queues={','.join(queues(settings))}",
            f"--hostname={hostname}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
