"""The CPU policy FlaskModel's processes run under (``scheduling``, setting ``cpu_policy``).

Each case runs in a child process started under the default policy, so the test process keeps
its own; the end-to-end cases read the policy of the real worker and gunicorn processes (and of
everything ``flaskmodel up`` starts, in ``test_stack.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's (the setting is a no-op here)"
)

# Applies the policy given as argv[1] after starting under argv[2] (a policy's name in os),
# prints what it got and what a child it starts gets.
_CHILD = """
import os, subprocess, sys
from flaskmodel.scheduling import apply_cpu_policy
os.sched_setscheduler(0, getattr(os, sys.argv[2]), os.sched_param(0))
ok = apply_cpu_policy(sys.argv[1])
child = subprocess.run(
    [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
    capture_output=True, text=True, check=True,
)
print(ok, os.sched_getscheduler(0), child.stdout.strip())
"""


def _policies(policy: str, start: str = "SCHED_OTHER") -> tuple[str, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, policy, start], capture_output=True, text=True, check=True
    )
    ok, own, child = out.stdout.split()
    return ok, int(own), int(child)


def test_batch_is_taken_and_inherited() -> None:
    assert _policies("batch") == ("True", os.SCHED_BATCH, os.SCHED_BATCH)


def test_inherit_keeps_the_policy() -> None:
    assert _policies("inherit") == ("True", os.SCHED_OTHER, os.SCHED_OTHER)


def test_an_idle_policy_chosen_by_the_starter_is_left_alone() -> None:
    assert _policies("batch", "SCHED_IDLE") == ("True", os.SCHED_IDLE, os.SCHED_IDLE)


def test_the_workers_and_gunicorns_processes_run_batch(stack: Stack) -> None:
    """``flaskmodel worker`` and ``flaskmodel serve`` started from this (default-policy) test
    process: each took the default ``batch`` itself (the worker in ``run_worker``, gunicorn's
    master in its ``on_starting`` hook, before forking), and the processes they fork inherited
    it."""
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert len(stack.pids) == 2
    for pid in stack.pids:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        assert len(family) >= 2  # gunicorn's master and worker; the worker and its pool child
        assert {p.pid: os.sched_getscheduler(p.pid) for p in family} == {
            p.pid: os.SCHED_BATCH for p in family
        }
