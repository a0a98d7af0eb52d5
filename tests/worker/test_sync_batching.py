"""Dynamic batching in a real worker: concurrent sync calls merge, jobs and series share it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests

from flaskmodel.runtime.fake import FakeRuntime
from flaskmodel.schemas import ModelSpec, TensorSpec
from tests.conftest import FAKE_SPEC, Stack
from tests.web.test_jobs_e2e import wait_job
from tests.web.test_predict_v1 import reference

CALLERS = 12


def test_concurrent_calls_are_merged_and_each_gets_its_rows(
    stack: Stack, models_root: Path
) -> None:
    before = stack.stats("tiny")
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(1 + i % 3, 32)).astype(np.float32) for i in range(CALLERS)]
    barrier = threading.Barrier(CALLERS)

    def call(x: np.ndarray) -> requests.Response:
        barrier.wait()
        return requests.post(
            stack.url("/v1/models/tiny:predict"), json={"instances": x.tolist()}, timeout=30
        )

    with ThreadPoolExecutor(CALLERS) as pool:
        responses = list(pool.map(call, inputs))
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = reference(models_root, "tiny", x=x)["probabilities"]
        np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    items = sum(len(x) for x in inputs)
    after = stack.stats_after("tiny", lambda s: s.items >= before.items + items)
    assert after.requests - before.requests == CALLERS
    batches = after.batches - before.batches
    assert batches < CALLERS, f"{CALLERS} calls took {batches} model calls"
    merged = {
        size: count - before.batch_sizes.get(size, 0)
        for size, count in after.batch_sizes.items()
        if size > 3 and count > before.batch_sizes.get(size, 0)
    }
    assert merged, f"no batch merged calls: {after.batch_sizes}"


def _at_once(stack: Stack, rows: list[list[float]]) -> list[requests.Response]:
    """``rows`` sent to ``flaky`` by as many callers at once."""
    barrier = threading.Barrier(len(rows))

    def call(row: list[float]) -> requests.Response:
        barrier.wait()
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row}]}
        return requests.post(stack.url("/v2/models/flaky/infer"), json=body, timeout=30)

    with ThreadPoolExecutor(len(rows)) as pool:
        return list(pool.map(call, rows))


def _overlapping(stack: Stack, callers: int) -> None:
    """Leave ``flaky``'s batcher as overlapping callers do (its last batch merged them all), so
    the next call waits for company: a lone caller's call goes at once and would run alone.
    Whether one try's callers reach the worker in one wake-up is up to timing (a lone first one
    goes at once), so it tries up to 40 times; a try takes a few tens of milliseconds."""
    for _ in range(40):
        before = stack.stats("flaky")
        _at_once(stack, [[1, 2, 3, 4]] * callers)
        wanted = before.requests + callers
        after = stack.stats_after("flaky", lambda s, wanted=wanted: s.requests >= wanted)
        if after.batches == before.batches + 1:
            return
    raise AssertionError(f"{callers} callers at once never shared a batch")


def test_a_failing_batch_fails_every_caller_with_the_cause(fake_stack: Stack) -> None:
    rows = [[1, 2, 3, 4], [7, 0, 0, 0], [5, 6, 7.5, 8]]  # the second one poisons the batch
    _overlapping(fake_stack, len(rows))
    before = fake_stack.stats("flaky")
    responses = _at_once(fake_stack, rows)
    for response in responses:
        assert response.status_code == 500, response.text
        assert "fails on 7.0" in response.json()["error"]
    after = fake_stack.stats_after("flaky", lambda s: s.failed_batches > before.failed_batches)
    assert after.failed_batches == before.failed_batches + 1
    assert after.batches == before.batches + 1
    # Without the poison the same model answers.
    spec = ModelSpec(
        name="flaky",
        version=1,
        inputs=[TensorSpec.model_validate(t) for t in FAKE_SPEC["inputs"]],
        outputs=[TensorSpec.model_validate(t) for t in FAKE_SPEC["outputs"]],
    )
    ok = call_once(fake_stack, [1, 2, 3, 4])
    expected = FakeRuntime.expected(spec, {"x": np.array([[1, 2, 3, 4]], np.float32)})["y"]
    np.testing.assert_allclose(ok["outputs"][0]["data"], expected[0], rtol=1e-6)


def call_once(stack: Stack, row: list[float]) -> dict[str, Any]:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row}]}
    response = requests.post(stack.url("/v2/models/flaky/infer"), json=body, timeout=30)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_jobs_and_series_go_through_the_batcher(stack: Stack) -> None:
    tiny_before = stack.stats("tiny")
    job = requests.post(
        stack.url("/v1/jobs"), json={"model": "tiny", "inputs": [[0.5] * 32] * 3}, timeout=10
    )
    assert wait_job(stack, job.json()["job_id"])["state"] == "SUCCEEDED"
    stack.stats_after("tiny", lambda s: s.items >= tiny_before.items + 3)
    ct_before = stack.stats("ct_classifier")
    series = requests.post(
        stack.url("/v1/jobs"),
        json={"model": "ct_classifier", "series_uid": "chest", "slices": {"stop": 5}},
        timeout=10,
    )
    assert wait_job(stack, series.json()["job_id"], timeout=120)["state"] == "SUCCEEDED"
    after = stack.stats_after("ct_classifier", lambda s: s.items >= ct_before.items + 5)
    assert after.items == ct_before.items + 5
