"""Process trees through psutil: a process's live descendants, and killing them without pid
reuse mistakes (each pid is remembered with its start time, ``psutil``'s ``create_time()``)."""

from __future__ import annotations

import contextlib
import time

import psutil


def descendants(pid: int) -> dict[int, float]:
    """Every live descendant of ``pid`` as pid → start time ({} when ``pid`` is gone)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    found: dict[int, float] = {}
    for child in children:
        with contextlib.suppress(psutil.Error):  # ended since it was listed
            found[child.pid] = child.create_time()
    return found


def running(procs: dict[int, float]) -> list[int]:
    """Those of the listed processes (pid → start time) that still run, zombies left out."""
    return [pid for pid, start in procs.items() if _process(pid, start) is not None]


def kill_processes(procs: dict[int, float], *, grace: float = 0.0, wait: float = 5.0) -> list[int]:
    """End the listed processes (pid → start time; a reused pid is left alone): those still
    alive after ``grace`` seconds get SIGKILL, then up to ``wait`` seconds to be gone.
    Returns the killed pids."""
    _wait_gone(procs, grace)
    killed = []
    for pid, start in procs.items():
        proc = _process(pid, start)
        if proc is not None:
            # psutil checks again, right before the signal, that the pid was not reused.
            with contextlib.suppress(psutil.Error):
                proc.kill()
            killed.append(pid)
    _wait_gone({pid: procs[pid] for pid in killed}, wait)
    return killed


def _wait_gone(procs: dict[int, float], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while running(procs) and time.monotonic() < deadline:
        time.sleep(0.02)


def _process(pid: int, start: float) -> psutil.Process | None:
    """The process ``pid`` if it is the one started at ``start`` and not a zombie."""
    try:
        proc = psutil.Process(pid)
        if proc.create_time() != start or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc
