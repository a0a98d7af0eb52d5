"""``Coalescer``: concurrent calls share one run; errors reach every caller; fork-safe."""

from __future__ import annotations

import os
import threading

import pytest

from flaskmodel.storage.coalesce import Coalescer


def test_concurrent_calls_share_runs_and_get_their_own_answers() -> None:
    runs: list[list[int]] = []
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        runs.append(items)
        release.wait(5)  # the first run holds the thread: the others queue behind it
        return [i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(run, "test")
    answers: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda i=i: answers.update({i: coalescer.call(i)}))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert answers == {i: i * 10 for i in range(20)}
    assert sorted(i for items in runs for i in items) == list(range(20))
    assert len(runs) < 20  # the calls queued while a run was going shared the next one


def test_an_error_reaches_every_caller_of_its_run_and_the_next_run_works() -> None:
    failing = True

    def run(items: list[str]) -> list[str]:
        if failing:
            raise ConnectionError("redis is down")
        return items

    coalescer: Coalescer[str, str] = Coalescer(run, "test")
    with pytest.raises(ConnectionError, match="redis is down"):
        coalescer.call("a")
    failing = False
    assert coalescer.call("b") == "b"


def test_a_forked_child_starts_its_own_thread() -> None:
    coalescer: Coalescer[int, int] = Coalescer(lambda items: [i + 1 for i in items], "test")
    assert coalescer.call(1) == 2
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread is not here
        os._exit(0 if coalescer.call(41) == 42 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
