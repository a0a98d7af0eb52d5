"""TF Serving's REST API through real gunicorn, worker and Redis, checked against the SavedModel."""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import Stack


@functools.cache
def _signature(root: str, name: str) -> Any:
    import tensorflow as tf  # noqa: PLC0415

    return tf.saved_model.load(f"{root}/{name}/1").signatures["serving_default"]


def reference(models_root: Path, name: str, **inputs: Any) -> dict[str, np.ndarray]:
    """The SavedModel called directly, in this process."""
    import tensorflow as tf  # noqa: PLC0415

    out = _signature(str(models_root), name)(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def post(stack: Stack, path: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(stack.url(path), json=body, timeout=30, **kwargs)


def test_model_status(stack: Stack) -> None:
    expected = {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    for path in ("/v1/models/tiny", "/v1/models/tiny/versions/1", "/v1/models/echo/labels/stable"):
        response = requests.get(stack.url(path), timeout=10)
        assert response.status_code == 200, response.text
        assert response.json() == expected
    unlabelled = requests.get(stack.url("/v1/models/tiny/labels/canary"), timeout=10)
    assert unlabelled.status_code == 404 and "label 'canary'" in unlabelled.json()["error"]


def test_metadata_has_tf_servings_exact_shape(stack: Stack) -> None:
    response = requests.get(stack.url("/v1/models/tiny/metadata"), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "model_spec": {"name": "tiny", "signature_name": "", "version": "1"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {
                            "x": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {
                                    "dim": [{"size": "-1", "name": ""}, {"size": "32", "name": ""}],
                                    "unknown_rank": False,
                                },
                                "name": "serving_default_x:0",
                            }
                        },
                        "outputs": {
                            "probabilities": {
                                "dtype": "DT_FLOAT",
                                "tensor_shape": {
                                    "dim": [{"size": "-1", "name": ""}, {"size": "10", "name": ""}],
                                    "unknown_rank": False,
                                },
                                "name": "StatefulPartitionedCall:0",
                            }
                        },
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }
    echo = requests.get(stack.url("/v1/models/echo/versions/1/metadata"), timeout=10).json()
    signature = echo["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert {k: v["dtype"] for k, v in signature["inputs"].items()} == {
        "scale": "DT_FLOAT",
        "text": "DT_STRING",
    }
    assert {k: v["dtype"] for k, v in signature["outputs"].items()} == {
        "doubled": "DT_FLOAT",
        "length": "DT_INT32",
        "text_bytes": "DT_STRING",
    }


def test_predict_row_and_columnar(stack: Stack, models_root: Path) -> None:
    x = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)
    expected = reference(models_root, "tiny", x=x)["probabilities"]
    rows = post(stack, "/v1/models/tiny:predict", {"instances": x.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(rows.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    named_rows = post(
        stack, "/v1/models/tiny/versions/1:predict", {"instances": [{"x": r} for r in x.tolist()]}
    )
    np.testing.assert_allclose(named_rows.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    columns = post(stack, "/v1/models/tiny/versions/1:predict", {"inputs": {"x": x.tolist()}})
    assert columns.status_code == 200, columns.text
    assert list(columns.json()) == ["outputs"]
    np.testing.assert_allclose(columns.json()["outputs"], expected, rtol=1e-5, atol=1e-6)
    bare = post(stack, "/v1/models/tiny:predict", {"inputs": x[:1].tolist()})
    np.testing.assert_allclose(bare.json()["outputs"], expected[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/x-www-form-urlencoded"}])
def test_no_json_content_type_needed(
    stack: Stack, models_root: Path, headers: dict[str, str]
) -> None:
    x = np.full((1, 32), 0.25, np.float32)
    body = json.dumps({"signature_name": "serving_default", "instances": x.tolist()})
    response = requests.post(
        stack.url("/v1/models/tiny:predict"), data=body.encode(), headers=headers, timeout=10
    )
    assert response.status_code == 200, response.text
    expected = reference(models_root, "tiny", x=x)["probabilities"]
    np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-5, atol=1e-6)


def test_several_inputs_and_outputs_with_b64(stack: Stack, models_root: Path) -> None:
    texts = [b"\x00\xffbinary", "héllo".encode()]
    scale = np.array([[1.0, 2.0], [-3.5, 0.25]], np.float32)
    expected = reference(models_root, "echo", text=np.array(texts, dtype=object), scale=scale)
    instances = [
        {"text": {"b64": base64.b64encode(texts[0]).decode()}, "scale": scale[0].tolist()},
        {"text": "héllo", "scale": scale[1].tolist()},
    ]
    rows = post(stack, "/v1/models/echo:predict", {"instances": instances})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert [sorted(p) for p in predictions] == [["doubled", "length", "text_bytes"]] * 2
    assert [base64.b64decode(p["text_bytes"]["b64"]) for p in predictions] == texts
    assert [p["length"] for p in predictions] == expected["length"].tolist()
    np.testing.assert_allclose([p["doubled"] for p in predictions], expected["doubled"])
    columns = post(
        stack,
        "/v1/models/echo/labels/stable:predict",
        {
            "inputs": {
                "text": [{"b64": base64.b64encode(t).decode()} for t in texts],
                "scale": scale.tolist(),
            }
        },
    )
    assert columns.status_code == 200, columns.text
    outputs = columns.json()["outputs"]
    assert sorted(outputs) == ["doubled", "length", "text_bytes"]
    assert [base64.b64decode(v["b64"]) for v in outputs["text_bytes"]] == texts
    assert outputs["length"] == expected["length"].tolist()


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/models/nope:predict", {"instances": [[1.0]]}, 404, "model 'nope'"),
        ("/v1/models/tiny/versions/9:predict", {"instances": [[1.0] * 32]}, 404, "version 9"),
        ("/v1/models/tiny/versions/x:predict", {"instances": [[1.0] * 32]}, 400, "version"),
        ("/v1/models/tiny:predict", {"instances": [[1.0] * 31]}, 400, "shape"),
        ("/v1/models/tiny:predict", {"inputs": {"x": [[1.0] * 32, [1.0]]}}, 400, "rectangular"),
        (
            "/v1/models/tiny:predict",
            {"instances": [[1.0] * 32], "inputs": [[1.0] * 32]},
            400,
            "not both",
        ),
        ("/v1/models/tiny:predict", {"signature_name": "serving_default"}, 400, "missing"),
        ("/v1/models/tiny:predict", [[1.0] * 32], 400, "JSON object"),
        (
            "/v1/models/tiny:predict",
            {"signature_name": "other", "instances": [[1.0] * 32]},
            400,
            "'other'",
        ),
        ("/v1/models/tiny:predict", {"inputs": {"y": [[1.0] * 32]}}, 400, "'x'"),
        (
            "/v1/models/echo:predict",
            {"instances": [{"text": {"b64": "!!"}, "scale": [1, 2]}]},
            400,
            "base64",
        ),
        ("/v1/models/tiny:classify", {"examples": []}, 400, "only ':predict'"),
        ("/v1/models/tiny:explode", {"instances": [[1.0] * 32]}, 404, "':explode'"),
        ("/v1/models/tiny", {"instances": [[1.0] * 32]}, 404, ":predict"),
    ],
)
def test_predict_errors(stack: Stack, path: str, body: Any, status: int, needle: str) -> None:
    response = post(stack, path, body)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert needle in response.json()["error"]


def test_malformed_and_unknown(stack: Stack) -> None:
    broken = requests.post(stack.url("/v1/models/tiny:predict"), data=b"{nope", timeout=10)
    assert broken.status_code == 400 and "malformed JSON" in broken.json()["error"]
    assert requests.get(stack.url("/v1/models/nope"), timeout=10).status_code == 404
    assert requests.get(stack.url("/v1/models/tiny/versions/3"), timeout=10).status_code == 404
    assert requests.get(stack.url("/v1/models/nope/metadata"), timeout=10).status_code == 404
