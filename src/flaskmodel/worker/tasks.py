"""Celery tasks: unpack ids and hand them to the per-process ``JobRunner``.

A Redis error while running a job rejects the message with requeue (it is redelivered once Redis
is back, or after the visibility timeout when the reject itself cannot reach Redis), so a store
outage never turns an accepted job into a lost one; so does a broker error while handing a
series job over to its next chunk (the redelivered chunk publishes it again). Past the soft time
limit (per chunk) the job is FAILED (timeout) and the message acknowledged: one execution, no
retry.

Two ways a soft time limit could lose or wrongly fail a job in a Redis outage, closed here: when
recording the timeout itself fails (Redis unreachable) the task failed, which acknowledged its
message with the job still RUNNING; and a soft-limit timer left over from an earlier delivery
(seen firing after a reject that could not reach Redis) can land in the next job of that pool
process. Now a timeout that cannot be recorded requeues the message, and a soft limit that fires
before the job's current delivery has run that long (``STALE_TOLERANCE``) requeues it instead of
failing it.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery
from celery.exceptions import Reject, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from flaskmodel.logs import job_context
from flaskmodel.worker.celery_app import TASK_RUN_JOB
from flaskmodel.worker.context import WorkerContext, current
from flaskmodel.worker.lifecycle import STALE_TOLERANCE

logger = logging.getLogger(__name__)


def register_tasks(app: Celery) -> None:
    """Attach the tasks to ``app``."""

    @app.task(name=TASK_RUN_JOB, ignore_result=True)  # type: ignore[untyped-decorator]
    def run_job(job_id: str, chunk: int = 0) -> None:
        context = current()
        with job_context(job_id):
            _run(context, job_id, chunk)


def _run(context: WorkerContext, job_id: str, chunk: int) -> None:
    try:
        context.runner.run(job_id, chunk)
    except SoftTimeLimitExceeded:
        try:
            _time_out(context, job_id)
        except redis.RedisError as exc:
            logger.warning("job %s: could not record its timeout (%s); requeued", job_id, exc)
            raise Reject(str(exc), requeue=True) from exc
    except (redis.RedisError, OperationalError) as exc:
        logger.warning("job %s: Redis or broker unavailable (%s); requeued", job_id, exc)
        raise Reject(str(exc), requeue=True) from exc


def _time_out(context: WorkerContext, job_id: str) -> None:
    limit = context.settings.jobs.soft_time_limit
    ran = context.jobs.running_for(job_id)
    if ran is not None and ran < limit - STALE_TOLERANCE:
        logger.warning("job %s: stale soft time limit after %.1fs; requeued", job_id, ran)
        raise Reject("stale soft time limit", requeue=True)
    logger.warning("job %s passed its time limit of %ds", job_id, limit)
    if context.jobs.fail(job_id, "timeout", f"job ran longer than its time limit of {limit} s"):
        context.runner.finished(job_id, "FAILED", "timeout")
    context.runner.settle(job_id)
