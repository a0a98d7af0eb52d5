"""Processes by /proc: a process tree's live descendants, and killing them without pid reuse
mistakes (each pid is remembered with its start time)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def descendants(pid: int) -> dict[int, int]:
    """Every live descendant of ``pid`` as pid → start time (clock ticks since boot)."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[1]
    found: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child in started and child not in found:
            found[child] = started[child]
            todo.extend(children.get(child, []))
    return found


def kill_processes(procs: dict[int, int], *, grace: float = 0.0, wait: float = 5.0) -> list[int]:
    """End the listed processes (pid → start time; a reused pid is left alone): those still
    alive after ``grace`` seconds get SIGKILL, then up to ``wait`` seconds to be gone.
    Returns the killed pids."""
    _wait_gone(procs, grace)
    killed = [pid for pid, start in procs.items() if _alive(pid, start)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone({pid: procs[pid] for pid in killed}, wait)
    return killed


def _wait_gone(procs: dict[int, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(pid, start) for pid, start in procs.items()) and time.monotonic() < deadline:
        time.sleep(0.02)


def _alive(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start and stat[2] != "Z"


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) from /proc/<pid>/stat, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after its last ')' do not.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]
