"""Jobs over HTTP through real gunicorn, a real Celery worker, real Redis and a real SavedModel."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from flaskmodel.jobs.store import DONE_TTL, done_key
from tests.conftest import Stack


def wait_job(stack: Stack, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = requests.get(stack.url(f"/v1/jobs/{job_id}"), timeout=5).json()
        if body["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return body
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish")


def tiny_reference(models_root: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf  # noqa: PLC0415

    fn = tf.saved_model.load(str(models_root / "tiny" / "1")).signatures["serving_default"]
    out = fn(x=tf.constant(x))
    return np.asarray(next(iter(out.values())).numpy())


def test_tensor_job_matches_the_savedmodel(stack: Stack, models_root: Path) -> None:
    x = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    response = requests.post(
        stack.url("/v1/jobs"), json={"model": "tiny", "inputs": x.tolist()}, timeout=10
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["Location"] == body["status_url"] == f"/v1/jobs/{body['job_id']}"
    assert body["state"] == "QUEUED"
    done = wait_job(stack, body["job_id"])
    assert done["state"] == "SUCCEEDED", done
    assert done["model"] == "tiny" and done["version"] == 1
    assert done["progress"] == {"done": 3, "total": 3}
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    got = np.array(done["result"]["predictions"], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_reference(models_root, x), rtol=1e-5, atol=1e-6)


def test_concurrent_submits_each_get_their_own_answer(stack: Stack, models_root: Path) -> None:
    # Tensor jobs submitted at once share broker messages and model calls (``JobPublisher``,
    # ``TensorJobBatch``); each must still get exactly its own outputs.
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=(1 + i % 3, 32)).astype(np.float32) for i in range(48)]

    def round_trip(x: np.ndarray) -> dict[str, Any]:
        body = {"model": "tiny", "inputs": x.tolist()}
        submitted = requests.post(stack.url("/v1/jobs"), json=body, timeout=30)
        assert submitted.status_code == 202, submitted.text
        url = stack.url(f"/v1/jobs/{submitted.json()['job_id']}?wait=30")
        answer: dict[str, Any] = requests.get(url, timeout=40).json()
        return answer

    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(round_trip, inputs))
    sizes = np.cumsum([len(x) for x in inputs])[:-1]
    want = np.split(tiny_reference(models_root, np.concatenate(inputs)), sizes)
    for x, view, expected in zip(inputs, done, want, strict=True):
        assert view["state"] == "SUCCEEDED", view
        assert view["progress"] == {"done": len(x), "total": len(x)}
        got = np.array(view["result"]["predictions"], dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_prefer_wait_submits_and_answers_the_finished_job(stack: Stack, models_root: Path) -> None:
    x = np.random.default_rng(6).normal(size=(2, 32)).astype(np.float32)
    body = {"model": "tiny", "inputs": x.tolist()}
    response = requests.post(
        stack.url("/v1/jobs"), json=body, headers={"Prefer": "wait=30"}, timeout=40
    )
    assert response.status_code == 200, response.text
    done = response.json()
    assert done["state"] == "SUCCEEDED" and done["progress"] == {"done": 2, "total": 2}
    assert response.headers["Location"] == done["status_url"] == f"/v1/jobs/{done['job_id']}"
    got = np.array(done["result"]["predictions"], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_reference(models_root, x), rtol=1e-5, atol=1e-6)
    assert requests.get(stack.url(done["status_url"]), timeout=10).json() == {
        k: v for k, v in done.items() if k != "status_url"
    }
    # A wait too short for the job answers as a plain submit does: 202 and the job queued.
    big = {"model": "ct_classifier", "inputs": np.zeros((32, 64, 64, 1)).tolist()}
    response = requests.post(
        stack.url("/v1/jobs"), json=big, headers={"Prefer": "wait=0"}, timeout=40
    )
    assert response.status_code == 202, response.text
    assert set(response.json()) == {"job_id", "state", "status_url"}
    # Unparseable preferences are ignored (RFC 7240), not refused.
    response = requests.post(
        stack.url("/v1/jobs"), json=body, headers={"Prefer": "wait=soon"}, timeout=40
    )
    assert response.status_code == 202, response.text


def test_columnar_inputs_give_outputs(stack: Stack, models_root: Path) -> None:
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    response = requests.post(
        stack.url("/v1/jobs"),
        json={"model": "tiny", "version": 1, "inputs": {"x": x.tolist()}},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    done = wait_job(stack, response.json()["job_id"])
    got = np.array(done["result"]["outputs"], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_reference(models_root, x), rtol=1e-5, atol=1e-6)


def test_idempotency_key_returns_the_first_job(stack: Stack) -> None:
    key = uuid.uuid4().hex
    payload = {"model": "tiny", "inputs": [[0.5] * 32]}
    first = requests.post(
        stack.url("/v1/jobs"), json=payload, headers={"Idempotency-Key": key}, timeout=10
    )
    second = requests.post(
        stack.url("/v1/jobs"), json=payload, headers={"Idempotency-Key": key}, timeout=10
    )
    assert first.status_code == 202
    assert second.status_code == 200
    assert first.json()["job_id"] == second.json()["job_id"]
    other = requests.post(
        stack.url("/v1/jobs"),
        json={"model": "tiny", "inputs": [[0.25] * 32]},
        headers={"Idempotency-Key": key},
        timeout=10,
    )
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["error"]


def test_unknown_job_is_404_json(stack: Stack) -> None:
    response = requests.get(stack.url("/v1/jobs/does-not-exist"), timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert "not found" in response.json()["error"]
    assert requests.delete(stack.url("/v1/jobs/nope"), timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"model": "tiny", "inputs": [[1.0] * 31]}, 400, "shape"),
        ({"model": "tiny", "inputs": [["a"] * 32]}, 400, "numbers"),
        ({"model": "tiny", "inputs": {"y": [[1.0] * 32]}}, 400, "'x'"),
        ({"model": "tiny"}, 400, "exactly one"),
        ({"model": "tiny", "inputs": [[1.0] * 32], "extra": 1}, 400, "extra"),
        ({"model": "nope", "inputs": [[1.0] * 32]}, 404, "model 'nope'"),
        ({"model": "tiny", "version": 9, "inputs": [[1.0] * 32]}, 404, "version 9"),
        ({"model": "../x", "inputs": [[1.0]]}, 400, "model"),
    ],
)
def test_bad_job_requests(stack: Stack, payload: dict[str, Any], status: int, needle: str) -> None:
    response = requests.post(stack.url("/v1/jobs"), json=payload, timeout=10)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"", {}, 400),
        (b'{"model": "tiny", "inputs": [[NaN]]}', {}, 400),
        (b"[" * 5000 + b"]" * 5000, {}, 400),
        (b"\xff\xfe", {}, 400),
        (b"x" * 1_100_000, {}, 413),
    ],
)
def test_malformed_bodies_are_json_4xx(
    stack: Stack, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = requests.post(stack.url("/v1/jobs"), data=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"]


def test_flask_404_405_are_json(stack: Stack) -> None:
    missing = requests.get(stack.url("/no/such/route"), timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]
    wrong = requests.put(stack.url("/v1/jobs"), timeout=5)
    assert wrong.status_code == 405 and wrong.json()["error"]
    assert "POST" in wrong.headers["Allow"]


def test_health_and_readiness(stack: Stack) -> None:
    assert requests.get(stack.url("/healthz"), timeout=5).json() == {"status": "ok"}
    ready = requests.get(stack.url("/readyz"), timeout=5)
    assert ready.status_code == 200
    assert {"tiny", "ct_classifier"} <= set(ready.json()["models"])


def test_get_with_wait_blocks_until_the_job_is_done(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    payload = {"model": "ct_classifier", "inputs": np.zeros((32, 64, 64, 1)).tolist()}
    job_id = requests.post(stack.url("/v1/jobs"), json=payload, timeout=30).json()["job_id"]

    def waiter(_: int) -> str:
        url = stack.url(f"/v1/jobs/{job_id}?wait=60")
        state: str = requests.get(url, timeout=70).json()["state"]
        return state

    with ThreadPoolExecutor(3) as pool:  # several waiters on one job all wake
        states = list(pool.map(waiter, range(3)))
    assert states == ["SUCCEEDED"] * 3
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(stack.settings.redis_url())
    assert 0 < client.ttl(done_key(job_id)) <= DONE_TTL  # the notice put back still expires
    client.close()
    finished = requests.get(stack.url(f"/v1/jobs/{job_id}?wait=5"), timeout=10)
    assert finished.json()["state"] == "SUCCEEDED"  # already finished: answers at once
    for bad in ("x", "-1", "100000", "nan"):
        response = requests.get(stack.url(f"/v1/jobs/{job_id}?wait={bad}"), timeout=10)
        assert response.status_code == 400, bad
        assert "wait must be" in response.json()["error"]


def test_submits_do_not_subscribe_to_celery_results(stack: Stack) -> None:
    # Job results live in the JobStore: a submit must not SUBSCRIBE to Celery's result channel
    # of its job (one more Redis round trip per submit, for a result that never comes).
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(stack.settings.redis_url())

    def subscribes() -> int:
        stats = client.info("commandstats").get("cmdstat_subscribe", {"calls": 0})
        return int(stats["calls"])

    body = {"model": "tiny", "inputs": {"x": np.zeros((1, 32)).tolist()}}
    before = subscribes()
    job_ids = [
        requests.post(stack.url("/v1/jobs"), json=body, timeout=30).json()["job_id"]
        for _ in range(5)
    ]
    for job_id in job_ids:
        assert wait_job(stack, job_id)["state"] == "SUCCEEDED"
    assert subscribes() - before < len(job_ids)
