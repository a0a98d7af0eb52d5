"""Deadlines of synchronous calls: 504 when they pass, and expired work is never computed."""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from tests.conftest import SLOW_MS, Stack


def slow_infer(stack: Stack, timeout_us: int | None = None) -> requests.Response:
    body: dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return requests.post(stack.url("/v2/models/slow/infer"), json=body, timeout=30)


def test_tiny_timeout_is_504_and_the_expired_request_is_not_computed(fake_stack: Stack) -> None:
    before = fake_stack.stats("slow")
    first: list[requests.Response] = []
    busy = threading.Thread(target=lambda: first.append(slow_infer(fake_stack)))
    busy.start()
    time.sleep(0.1)  # the first call now holds the model for SLOW_MS
    started = time.monotonic()
    late = slow_infer(fake_stack, timeout_us=50_000)
    elapsed = time.monotonic() - started
    busy.join(10)
    assert late.status_code == 504, late.text
    assert late.json()["type"] == "deadline_exceeded" and "0.05 s" in late.json()["error"]
    assert elapsed < SLOW_MS / 1000  # answered at its deadline, not when the model got free
    assert first[0].status_code == 200, first[0].text
    after = fake_stack.stats_after("slow", lambda s: s.expired > before.expired)
    assert after.expired == before.expired + 1
    # Every call since `before` reached the model except the expired one (a heartbeat may
    # publish `before` late, so compare the differences, not absolute counts).
    assert (after.requests - before.requests) - (after.batches - before.batches) == 1


def test_tf_serving_predict_has_the_default_deadline(fake_stack: Stack) -> None:
    response = requests.post(
        fake_stack.url("/v1/models/slow:predict"), json={"instances": [[1, 2, 3, 4]]}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]) == 3
