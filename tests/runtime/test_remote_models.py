"""A worker that mixes runtimes: ``ct_classifier`` in-process, ``tiny`` and ``tiny_slow`` from the
stand-in TF Serving over gRPC, ``echo`` from it over REST — behind both HTTP APIs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from flaskmodel.settings import Settings
from tests import databases
from tests.conftest import Stack, redis_db, running_stack
from tests.runtime.conftest import SLOW_MODEL, TfServing
from tests.web.test_predict_v1 import reference


@pytest.fixture(scope="module")
def mixed_stack(
    tfserving: TfServing,
    models_root: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("mixed-stack")
    grpc = {"backend": "tfserving_grpc", "target": tfserving.grpc_target}
    settings = Settings(
        models_root=models_root,
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.REMOTE_MODELS)},
        worker={"heartbeat_seconds": 1.0},
        runtime={
            "remote_models": {
                "tiny": grpc,
                SLOW_MODEL: grpc,
                "echo": {"backend": "tfserving_rest", "target": tfserving.rest_url},
            }
        },
    )
    with running_stack(settings, logs) as stack:
        yield stack


def test_a_worker_serves_models_locally_and_through_tf_serving(
    mixed_stack: Stack, models_root: Path
) -> None:
    log = (mixed_stack.logs / "worker.log").read_text()
    assert "model tiny version 1 served by 127.0.0.1:" in log and "(gRPC)" in log
    assert "model echo version 1 served by http://" in log and "(REST)" in log
    assert "loaded model ct_classifier version 1 from" in log  # in-process
    x = np.random.default_rng(9).normal(size=(3, 32)).astype(np.float32)
    expected = reference(models_root, "tiny", x=x)["probabilities"]
    v1 = requests.post(
        mixed_stack.url("/v1/models/tiny:predict"), json={"instances": x.tolist()}, timeout=30
    )
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    body = {"inputs": [{"name": "x", "shape": [3, 32], "datatype": "FP32", "data": x.tolist()}]}
    v2 = requests.post(mixed_stack.url("/v2/models/tiny/infer"), json=body, timeout=30)
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(
        np.reshape(v2.json()["outputs"][0]["data"], (3, 10)), expected, rtol=1e-5, atol=1e-6
    )
    echo = requests.post(
        mixed_stack.url("/v1/models/echo:predict"),
        json={"instances": [{"text": "abc", "scale": [1, 2]}]},
        timeout=30,
    )
    assert echo.status_code == 200, echo.text
    assert echo.json()["predictions"][0]["length"] == 3
    # Only the stand-in has tiny_slow: the worker found it there.
    meta = requests.get(mixed_stack.url(f"/v2/models/{SLOW_MODEL}"), timeout=30)
    assert meta.status_code == 200 and meta.json()["inputs"][0]["name"] == "x"
    assert requests.get(mixed_stack.url("/v1/models/ct_classifier"), timeout=30).ok
    assert mixed_stack.stats_after("tiny", lambda s: s.requests >= 2).requests >= 2


def test_tf_serving_deadline_is_a_504(mixed_stack: Stack) -> None:
    """``tiny_slow`` takes 1.5 s at the stand-in; a caller's 0.5 s V2 timeout answers 504."""
    body = {
        "inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}],
        "parameters": {"timeout": 500_000},
    }
    answer = requests.post(mixed_stack.url(f"/v2/models/{SLOW_MODEL}/infer"), json=body, timeout=30)
    assert answer.status_code == 504, answer.text
