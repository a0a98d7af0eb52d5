"""A whole second stack (its own Redis database) whose worker serves ``tiny`` and ``echo``
through a TF Serving REST API: FlaskModel's own (the clients alone are tested against the stand-in
TF Serving in ``test_tfserving_clients``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from flaskmodel.settings import Settings
from tests.conftest import Stack, redis_db, running_stack
from tests.web.test_predict_v1 import reference


@pytest.fixture(scope="module")
def proxy_stack(
    stack: Stack, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("proxy-stack")
    settings = Settings(
        models_root=logs / "models",
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, 2)},
        worker={"heartbeat_seconds": 1.0},
        runtime={
            "backend": "tfserving_rest",
            "tfserving_url": stack.base_url,
            "tfserving_models": ["tiny", "echo"],
        },
    )
    with running_stack(settings, logs) as proxy:
        yield proxy


def test_a_worker_serves_models_through_tf_serving(proxy_stack: Stack, models_root: Path) -> None:
    x = np.random.default_rng(9).normal(size=(3, 32)).astype(np.float32)
    expected = reference(models_root, "tiny", x=x)["probabilities"]
    v1 = requests.post(
        proxy_stack.url("/v1/models/tiny:predict"), json={"instances": x.tolist()}, timeout=30
    )
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    body = {"inputs": [{"name": "x", "shape": [3, 32], "datatype": "FP32", "data": x.tolist()}]}
    v2 = requests.post(proxy_stack.url("/v2/models/tiny/infer"), json=body, timeout=30)
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(
        np.reshape(v2.json()["outputs"][0]["data"], (3, 10)), expected, rtol=1e-5, atol=1e-6
    )
    echo = requests.post(
        proxy_stack.url("/v1/models/echo:predict"),
        json={"instances": [{"text": "abc", "scale": [1, 2]}]},
        timeout=30,
    )
    assert echo.status_code == 200, echo.text
    assert echo.json()["predictions"][0]["length"] == 3
    assert proxy_stack.stats_after("tiny", lambda s: s.requests >= 2).requests >= 2
