"""Triton's own Python client (``tritonclient[http]``) against FlaskModel's V2 API, unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import Stack
from tests.web.test_predict_v1 import reference


@pytest.fixture
def client(stack: Stack) -> Iterator[triton.InferenceServerClient]:
    made = triton.InferenceServerClient(url=urlsplit(stack.base_url).netloc, network_timeout=30)
    yield made
    made.close()


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "classification"]
    metadata = client.get_model_metadata("tiny")
    assert metadata["name"] == "tiny"
    assert [i["name"] for i in metadata["inputs"]] == ["x"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_matches_the_savedmodel(
    client: triton.InferenceServerClient, stack: Stack, binary: bool
) -> None:
    x = np.random.default_rng(7).random((3, 32), dtype=np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("tiny", [tensor], outputs=[wanted], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    want = reference(stack.settings.models_root, "tiny", x=x)["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-5, atol=1e-6)


def test_classification_extension(client: triton.InferenceServerClient) -> None:
    x = np.random.default_rng(8).random((2, 32), dtype=np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    top = triton.InferRequestedOutput("probabilities", class_count=2)
    result = client.infer("tiny", [tensor], outputs=[top])
    labels = result.as_numpy("probabilities")
    assert labels.shape == (2, 2)
    assert all(b":" in item for item in labels.reshape(-1))  # "<score>:<index>[:<label>]"


def test_errors_reach_the_client_as_exceptions(client: triton.InferenceServerClient) -> None:
    wrong = triton.InferInput("x", [1, 31], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 31), np.float32))
    with pytest.raises(InferenceServerException, match="x"):
        client.infer("tiny", [wrong])
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("no_such_model")
