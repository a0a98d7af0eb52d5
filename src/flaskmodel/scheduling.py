"""The CPU scheduling policy of FlaskModel's processes (the ``cpu_policy`` setting; Linux).

Under Linux's default policy a process that wakes up may preempt the one running on its core.
Every hand-off of a synchronous call is such a wake-up (nginx with the request, gunicorn, Redis
with the push, the worker, Redis with the reply, gunicorn, nginx), so on a host whose cores are
all busy the processes of the stack preempt each other over and over: at 64 connections on 2
cores a gunicorn worker was preempted 1.5 times per request, each time losing its caches with
its core. A ``SCHED_BATCH`` process keeps the same share of the CPU (its nice value counts as
before) but never preempts on waking: it waits until the running process blocks or its time
slice ends. With the whole stack under it, a gunicorn worker was preempted 0.1 times per
request and M1 at 64 connections served 20 % more requests with a lower p99
(benchmarks/README.md, "What each change bought").

``apply_cpu_policy`` puts the calling process under the policy; processes it starts afterwards
inherit it (across ``exec`` too). ``flaskmodel up`` calls it before it starts supervisord
(``deploy.stack``), so Redis, nginx, gunicorn, the worker and the DICOM front door all run under
it; the worker (``run_worker``), the front door (``run_gateway``) and gunicorn's master (the
``on_starting`` hook of the packaged config) call it for themselves, so the programs of
``flaskmodel deploy render`` do too. A process started under a real-time or idle policy is left
as it is: someone chose that on purpose.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

#: The ``cpu_policy`` that asks for ``SCHED_BATCH`` (the other, ``inherit``, changes nothing).
BATCH = "batch"


def apply_cpu_policy(policy: str) -> bool:
    """Put this process under ``policy``; False (logged) when ``batch`` could not be applied:
    no ``SCHED_BATCH`` on this system, or the system refused."""
    if policy != BATCH:
        return True
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None or not hasattr(os, "sched_setscheduler"):
        logger.warning("cpu_policy batch: this system has no SCHED_BATCH; the policy stays")
        return False
    try:
        current = os.sched_getscheduler(0)
        if current == os.SCHED_OTHER:
            os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError as exc:
        logger.warning("cpu_policy batch: not applied (%s); the policy stays", exc)
        return False
    return True
