"""``flaskmodel worker``: a Celery worker whose processes load the models after fork."""

from __future__ import annotations

from typing import Any

from celery import signals

from flaskmodel.jobs.broker import make_celery, model_queue, publish_job
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.scheduling import apply_cpu_policy
from flaskmodel.schemas import JobRequest
from flaskmodel.settings import Settings
from flaskmodel.worker import context
from flaskmodel.worker.lifecycle import MainProcessHooks, check_limits
from flaskmodel.worker.tasks import register_tasks


def served_models(settings: Settings) -> list[str]:
    """The models this worker serves: ``worker.models``, else every model found at start-up."""
    return settings.worker.models or ModelRepository.from_settings(settings).names()


def queues(settings: Settings, models: list[str] | None = None) -> list[str]:
    """The base queue and one queue per served model."""
    served = served_models(settings) if models is None else models
    return [settings.worker.queue, *(model_queue(settings.worker.queue, m) for m in served)]


def run_worker(settings: Settings) -> None:
    """Run a worker in the foreground until it is told to stop."""
    settings.redis_url()  # refuse to start without a Redis to talk to
    apply_cpu_policy(settings.cpu_policy)  # its pool processes inherit it
    app = make_celery(settings)
    check_limits(app, settings)  # refuse a lease shorter than the hard limit
    register_tasks(app)
    # Resolved once: every pool process serves exactly the models whose queues are consumed.
    models = served_models(settings)
    MainProcessHooks(settings, queues(settings, models)).connect()

    def requeue(job_id: str, request: JobRequest, chunk: int) -> None:
        # The next chunk of a series job goes to the back of its model's queue (fairness).
        priority = request.priority or settings.jobs.default_priority
        queue = settings.worker.queue
        publish_job(app, job_id, request.model, queue=queue, priority=priority, chunk=chunk)

    def init_process(**_: Any) -> None:
        # After fork, in the pool process: TensorFlow loads here, never in the parent.
        context.install(settings, models, requeue)

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
            f"--queues={','.join(queues(settings, models))}",
            f"--hostname={settings.worker.node_name}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
