"""``Coalescer``: concurrent calls of one process share one Redis round trip.

A call queues its item and waits; one background thread (a greenlet under gevent's
monkey-patching) takes every item queued since it last ran and hands them to ``run`` together,
which answers them all in one pipeline. Under gevent the thread runs once the request greenlets
that are ready have queued theirs, so a busy web process pays one round trip for many requests
and a lone request pays no added delay. Fork-safe: a process that inherits a coalescer from its
parent starts its own thread on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import redis

Item = TypeVar("Item")
Reply = TypeVar("Reply")

#: Longest a call waits for its round trip (a stuck sender must not hang requests for ever).
WAIT_SECONDS = 5.0


@dataclass
class _Waiter(Generic[Item, Reply]):
    item: Item
    done: threading.Event = field(default_factory=threading.Event)
    reply: Reply | None = None
    error: BaseException | None = None


class Coalescer(Generic[Item, Reply]):
    """``call(item)``: ``run([item, ...])[i]`` for this item, run together with the items of
    concurrent calls; an exception ``run`` raises is raised in every call it was running, and a
    call not answered within ``WAIT_SECONDS`` raises ``redis.TimeoutError``."""

    def __init__(self, run: Callable[[list[Item]], list[Reply]], name: str) -> None:
        self._run = run
        self._name = name
        self._lock = threading.Lock()
        self._pid = -1
        self._queued: list[_Waiter[Item, Reply]] = []
        self._wake = threading.Event()

    def call(self, item: Item) -> Reply:
        self._ensure_started()
        waiter: _Waiter[Item, Reply] = _Waiter(item)
        with self._lock:
            self._queued.append(waiter)
        self._wake.set()
        if not waiter.done.wait(WAIT_SECONDS):
            raise redis.TimeoutError(f"{self._name}: no answer within {WAIT_SECONDS:g} s")
        if waiter.error is not None:
            raise waiter.error
        return waiter.reply  # type: ignore[return-value]

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queued = []
            self._wake = threading.Event()
            threading.Thread(target=self._loop, name=self._name, daemon=True).start()
            self._pid = os.getpid()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._queued = self._queued, []
            if not batch:
                continue
            try:
                replies = self._run([w.item for w in batch])
            except BaseException as exc:  # noqa: BLE001 - every caller hears of it, none waits
                for waiter in batch:
                    waiter.error = exc
                    waiter.done.set()
                continue
            for waiter, reply in zip(batch, replies, strict=True):
                waiter.reply = reply
                waiter.done.set()
