"""Memory figures of the bench stack: the worker's RSS over the M1 scenarios (issue 5's soak
target) and the RSS of every process of the stack at the end."""

from __future__ import annotations

from pathlib import Path

from flaskmodel.deploy.processes import descendants


def worker_rss(supervisor_pid: int) -> dict[int, int]:
    """RSS in KiB of each worker pool process (the processes that run models), by pid."""
    found = {}
    for pid in descendants(supervisor_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if b"flaskmodel\0worker" in cmd:
            found[pid] = next(
                (int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0
            )
    return found


def soak_note(before: dict[int, int], after: dict[int, int], inferences: int) -> str:
    """How the worker's memory moved over the M1 scenarios (issue 5's soak target)."""
    same = sorted(set(before) & set(after))
    growth = [(after[p] - before[p]) / 1024 for p in same]
    shown = (
        ", ".join(f"{before[p] / 1024:.0f} → {after[p] / 1024:.0f} MiB" for p in same)
        or "worker processes restarted in between"
    )
    largest = max(growth, default=float("nan"))
    return (
        f"Worker RSS over {inferences:,} M1 inferences (every `tiny` scenario): {shown}; "
        f"largest growth {largest:.1f} MiB"
    )


def memory(supervisor_pid: int) -> str:
    """RSS of every process of the stack, by command."""
    parts = []
    for pid in sorted(descendants(supervisor_pid)):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        except OSError:
            continue
        rss = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
        parts.append(f"{cmd.strip()} {rss / 1024:.0f} MiB")
    return "RSS after the run: " + "; ".join(parts)
