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
from collections.abc import Callable

import redis
from celery import Celery
from celery.exceptions import Reject, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from flaskmodel.jobs.broker import TASK_RUN_JOB, TASK_RUN_JOBS
from flaskmodel.logs import job_context
from flaskmodel.worker.context import WorkerContext, current
from flaskmodel.worker.lifecycle import STALE_TOLERANCE

logger = logging.getLogger(__name__)


def register_tasks(app: Celery) -> None:
    """Attach the tasks to ``app``."""

    @app.task(name=TASK_RUN_JOB, ignore_result=True)  # type: ignore[untyped-decorator]
    def run_job(job_id: str, chunk: int = 0) -> None:
        context = current()
        with job_context(job_id):
            _run(context, [job_id], lambda: context.runner.run(job_id, chunk))

    @app.task(name=TASK_RUN_JOBS, ignore_result=True)  # type: ignore[untyped-decorator]
    def run_jobs(job_ids: list[str]) -> None:
        context = current()
        _run(context, job_ids, lambda: context.runner.run_many(job_ids))


def _run(context: WorkerContext, job_ids: list[str], work: Callable[[], None]) -> None:
    try:
        work()
    except SoftTimeLimitExceeded:
        try:
            _time_out(context, job_ids)
        except redis.RedisError as exc:
            logger.warning("jobs %s: could not record their timeout (%s); requeued", job_ids, exc)
            raise Reject(str(exc), requeue=True) from exc
    except (redis.RedisError, OperationalError) as exc:
        logger.warning("jobs %s: Redis or broker unavailable (%s); requeued", job_ids, exc)
        raise Reject(str(exc), requeue=True) from exc


def _time_out(context: WorkerContext, job_ids: list[str]) -> None:
    """Fail the message's unfinished jobs (timeout), unless the limit is a stale timer."""
    limit = context.settings.jobs.soft_time_limit
    unfinished = [i for i in job_ids if (s := context.jobs.state(i)) is not None and not s.terminal]
    for job_id in unfinished:
        ran = context.jobs.running_for(job_id)
        if ran is not None and ran < limit - STALE_TOLERANCE:
            logger.warning("job %s: stale soft time limit after %.1fs; requeued", job_id, ran)
            raise Reject("stale soft time limit", requeue=True)
    for job_id in unfinished:
        with job_context(job_id):
            logger.warning("job %s passed its time limit of %ds", job_id, limit)
            message = f"job ran longer than its time limit of {limit} s"
            if context.jobs.fail(job_id, "timeout", message):
                context.runner.finished(job_id, "FAILED", "timeout")
            context.runner.settle(job_id)
