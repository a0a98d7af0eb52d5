"""The ``tfserving_rest`` runtime against a real TF Serving REST API: FlaskModel's own.

No ``tensorflow_model_server`` can be installed here, and FlaskModel speaks TF Serving's REST API,
so the session stack stands in for TF Serving: first the client alone, then a whole second stack
(its own Redis database) whose worker serves ``tiny`` and ``echo`` through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from flaskmodel.errors import InvalidInput, ModelNotFound, ServiceUnavailable
from flaskmodel.runtime.repository import ModelRepository
from flaskmodel.runtime.tfserving_rest import TfServingRestClient, TfServingRestRuntime
from flaskmodel.settings import Settings
from tests.conftest import Stack, redis_db, running_stack
from tests.web.test_predict_v1 import reference


@pytest.fixture
def client(stack: Stack) -> Iterator[TfServingRestClient]:
    found = TfServingRestClient(stack.base_url, timeout=10)
    yield found
    found.close()


def test_versions_metadata_and_predict(client: TfServingRestClient, models_root: Path) -> None:
    assert client.versions("tiny") == [1]
    assert client.versions("nope") == []
    runtime = TfServingRestRuntime(client, "tiny", 1)
    runtime.load()
    local = ModelRepository(models_root).get("tiny").spec
    assert runtime.spec == local  # names, dtypes, shapes and graph tensor names
    x = np.random.default_rng(8).normal(size=(5, 32)).astype(np.float32)
    got = runtime.predict({"x": x})
    assert got["probabilities"].dtype == np.float32
    np.testing.assert_allclose(
        got["probabilities"], reference(models_root, "tiny", x=x)["probabilities"], rtol=1e-6
    )


def test_strings_and_several_outputs(client: TfServingRestClient, models_root: Path) -> None:
    runtime = TfServingRestRuntime(client, "echo", 1)
    runtime.load()
    text = np.array([b"\xff\x00raw", b"text"], dtype=object)
    scale = np.array([[1, 2], [3, 4]], np.float32)
    got = runtime.predict({"text": text, "scale": scale})
    expected = reference(models_root, "echo", text=text, scale=scale)
    assert got["text_bytes"].tolist() == expected["text_bytes"].tolist()
    assert got["length"].dtype == np.int32 and got["length"].tolist() == [5, 4]
    np.testing.assert_array_equal(got["doubled"], expected["doubled"])


def test_errors_map_onto_the_error_tree(client: TfServingRestClient) -> None:
    with pytest.raises(ModelNotFound):
        TfServingRestRuntime(client, "tiny", 9).load()
    runtime = TfServingRestRuntime(client, "tiny", 1)
    runtime.load()
    with pytest.raises(InvalidInput):
        runtime.predict({"x": np.zeros((1, 31), np.float32)})
    gone = TfServingRestClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(ServiceUnavailable):
        gone.versions("tiny")


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
