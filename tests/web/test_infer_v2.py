"""The Open Inference Protocol (V2) through real gunicorn, worker and Redis, JSON and binary."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from flaskmodel.runtime.fake import FakeRuntime
from flaskmodel.schemas import ModelSpec, TensorSpec
from tests.conftest import TYPED_SPEC, Stack
from tests.web.test_jobs_e2e import wait_job
from tests.web.test_predict_v1 import reference


def binary_body(header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A body as tritonclient builds it: JSON header, then the raw blobs, and its length header."""
    raw = json.dumps(header).encode()
    return raw + b"".join(blobs), {"Inference-Header-Content-Length": str(len(raw))}


def read_binary(response: requests.Response) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The JSON header of a binary response and each binary output's bytes."""
    size = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:size])
    blobs, offset = {}, size
    for output in header["outputs"]:
        if "parameters" in output and "binary_data_size" in output["parameters"]:
            end = offset + output["parameters"]["binary_data_size"]
            blobs[output["name"]] = response.content[offset:end]
            offset = end
    assert offset == len(response.content)
    return header, blobs


def pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_health_and_server_metadata(stack: Stack) -> None:
    live = requests.get(stack.url("/v2/health/live"), timeout=10)
    ready = requests.get(stack.url("/v2/health/ready"), timeout=10)
    assert live.status_code == 200 and ready.status_code == 200, ready.text
    server = requests.get(stack.url("/v2"), timeout=10).json()
    assert server == {
        "name": "flaskmodel",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "classification"],
    }


def test_model_metadata_and_readiness(stack: Stack) -> None:
    expected = {
        "name": "tiny",
        "versions": ["1"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 32]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    for path in ("/v2/models/tiny", "/v2/models/tiny/versions/1"):
        assert requests.get(stack.url(path), timeout=10).json() == expected
    echo = requests.get(stack.url("/v2/models/echo"), timeout=10).json()
    assert echo["inputs"] == [
        {"name": "scale", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
    ]
    for path in ("/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready"):
        response = requests.get(stack.url(path), timeout=10)
        assert response.status_code == 200 and response.json() == {"name": "tiny", "ready": True}
    assert requests.get(stack.url("/v2/models/nope/ready"), timeout=10).status_code == 404
    assert requests.get(stack.url("/v2/models/tiny/versions/2"), timeout=10).status_code == 404


@pytest.mark.parametrize("nested", [False, True])
def test_infer_json(stack: Stack, models_root: Path, nested: bool) -> None:
    x = np.random.default_rng(2).normal(size=(2, 32)).astype(np.float32)
    data = x.tolist() if nested else x.reshape(-1).tolist()
    body = {
        "id": "req-42",
        "inputs": [{"name": "x", "shape": [2, 32], "datatype": "FP32", "data": data}],
    }
    response = requests.post(stack.url("/v2/models/tiny/infer"), json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_name"] == "tiny" and answer["model_version"] == "1"
    assert answer["id"] == "req-42"
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "probabilities",
        "FP32",
        [2, 10],
    )
    expected = reference(models_root, "tiny", x=x)["probabilities"]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 10)), expected, rtol=1e-5, atol=1e-6)


def test_binary_inputs_and_outputs_round_trip(stack: Stack, models_root: Path) -> None:
    x = np.random.default_rng(3).normal(size=(4, 32)).astype(np.float32)
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [4, 32],
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    body, headers = binary_body(header, [x.astype("<f4").tobytes()])
    response = requests.post(
        stack.url("/v2/models/tiny/versions/1/infer"), data=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    answer, blobs = read_binary(response)
    [output] = answer["outputs"]
    assert output["parameters"] == {"binary_data_size": 4 * 10 * 4} and "data" not in output
    got = np.frombuffer(blobs["probabilities"], "<f4").reshape(output["shape"])
    expected = reference(models_root, "tiny", x=x)["probabilities"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_bytes_tensors_json_and_binary(stack: Stack, models_root: Path) -> None:
    texts = [b"abc", b"\x00\x01\x02\xff", b""]
    scale = np.arange(6, dtype=np.float32).reshape(3, 2)
    header = {
        "id": "b",
        "parameters": {"binary_data_output": True},
        "inputs": [
            {
                "name": "text",
                "shape": [3],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(pack_bytes(texts))},
            },
            {"name": "scale", "shape": [3, 2], "datatype": "FP32", "data": scale.tolist()},
        ],
    }
    body, headers = binary_body(header, [pack_bytes(texts)])
    response = requests.post(
        stack.url("/v2/models/echo/infer"), data=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    answer, blobs = read_binary(response)
    assert answer["id"] == "b"
    assert [o["name"] for o in answer["outputs"]] == ["doubled", "length", "text_bytes"]
    assert blobs["text_bytes"] == pack_bytes(texts)
    assert np.frombuffer(blobs["length"], "<i4").tolist() == [3, 4, 0]
    np.testing.assert_array_equal(np.frombuffer(blobs["doubled"], "<f4").reshape(3, 2), scale * 2)
    as_json = {
        "inputs": [
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["héllo", "x"]},
            {"name": "scale", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
        ],
        "outputs": [{"name": "text_bytes"}, {"name": "length"}],
    }
    response = requests.post(stack.url("/v2/models/echo/infer"), json=as_json, timeout=30)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["text_bytes", "length"]
    assert outputs[0] == {
        "name": "text_bytes",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["héllo", "x"],
    }
    expected = reference(
        models_root,
        "echo",
        text=np.array([b"h\xc3\xa9llo", b"x"], object),
        scale=np.ones((2, 2), np.float32),
    )
    assert outputs[1]["data"] == expected["length"].tolist() == [6, 1]


@pytest.mark.parametrize("binary", [False, True])
def test_every_numeric_datatype(fake_stack: Stack, binary: bool) -> None:
    rng = np.random.default_rng(4)
    arrays = {
        "flags": rng.random((2, 2)) > 0.5,
        "counts": rng.integers(-1000, 1000, (2, 3)).astype(np.int32),
        "half": rng.normal(size=(2, 1)).astype(np.float16),
        "pixels": rng.integers(0, 256, (2, 2)).astype(np.uint8),
    }
    names = {"flags": "BOOL", "counts": "INT32", "half": "FP16", "pixels": "UINT8"}
    inputs, blobs = [], []
    for name, value in arrays.items():
        entry: dict[str, Any] = {"name": name, "shape": list(value.shape), "datatype": names[name]}
        if binary:
            blob = value.astype(value.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.reshape(-1).tolist()
        inputs.append(entry)
    body, headers = binary_body({"inputs": inputs}, blobs)
    response = requests.post(
        fake_stack.url("/v2/models/typed/infer"),
        data=body,
        headers=headers if binary else {},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    spec = ModelSpec(
        name="typed",
        version=1,
        inputs=[TensorSpec.model_validate(t) for t in TYPED_SPEC["inputs"]],
        outputs=[TensorSpec.model_validate(t) for t in TYPED_SPEC["outputs"]],
    )
    expected = FakeRuntime.expected(spec, arrays)
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["y"]["datatype"] == "FP32" and outputs["z"]["datatype"] == "FP64"
    for name in ("y", "z"):
        got = np.reshape(outputs[name]["data"], outputs[name]["shape"])
        np.testing.assert_allclose(got, expected[name], rtol=1e-6)


def test_classification_extension(stack: Stack, models_root: Path) -> None:
    x = np.random.default_rng(5).normal(size=(2, 32)).astype(np.float32)
    body = {
        "inputs": [{"name": "x", "shape": [2, 32], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
    }
    response = requests.post(stack.url("/v2/models/tiny/infer"), json=body, timeout=30)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [2, 3]
    probs = reference(models_root, "tiny", x=x)["probabilities"]
    for row, entries in zip(probs, np.reshape(output["data"], (2, 3)), strict=True):
        top = np.argsort(-row)[:3]
        parsed = [entry.split(":") for entry in entries]
        assert [int(p[1]) for p in parsed] == top.tolist()
        assert [p[2] for p in parsed] == [str(i) for i in top]  # tiny's class names
        np.testing.assert_allclose([float(p[0]) for p in parsed], row[top], atol=1e-6)


def tiny_input(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}
    return {"inputs": [{**tensor, **overrides}]}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (tiny_input(datatype="FP64"), "expects FP32"),
        (tiny_input(shape=[1, 31], data=[0.5] * 31), "shape"),
        (tiny_input(data=[0.5] * 31), "31 values"),
        (tiny_input(name="y"), "takes inputs"),
        (tiny_input(data=["a"] * 32), "FP32 values"),
        (tiny_input(data=None), "neither data"),
        (tiny_input(parameters={"binary_data_size": 128}), "both data"),
        ({**tiny_input(), "outputs": [{"name": "logits"}]}, "no output 'logits'"),
        ({**tiny_input(), "extra": 1}, "extra"),
        ({"inputs": []}, "inputs"),
        ({**tiny_input(), "parameters": {"timeout": "soon"}}, "timeout"),
        (
            {
                **tiny_input(),
                "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}],
            },
            "classification",
        ),
    ],
)
def test_infer_errors_are_400(stack: Stack, body: dict[str, Any], needle: str) -> None:
    response = requests.post(stack.url("/v2/models/tiny/infer"), json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_binary_framing_errors(stack: Stack) -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 32],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 128},
            }
        ]
    }
    short, headers = binary_body(header, [b"\x00" * 100])
    long, _ = binary_body(header, [b"\x00" * 140])
    for body, needle in ((short, "ends"), (long, "belong to no input")):
        response = requests.post(
            stack.url("/v2/models/tiny/infer"), data=body, headers=headers, timeout=30
        )
        assert response.status_code == 400 and needle in response.json()["error"], response.text
    bad_length = requests.post(
        stack.url("/v2/models/tiny/infer"),
        data=short,
        headers={"Inference-Header-Content-Length": "99999"},
        timeout=30,
    )
    assert bad_length.status_code == 400
    too_big = requests.post(stack.url("/v2/models/tiny/infer"), data=b"\0" * 1_100_000, timeout=30)
    assert too_big.status_code == 413 and too_big.json()["error"]
    assert (
        requests.post(stack.url("/v2/models/nope/infer"), json=tiny_input(), timeout=30).status_code
        == 404
    )
    assert (
        requests.post(
            stack.url("/v2/models/tiny/versions/7/infer"), json=tiny_input(), timeout=30
        ).status_code
        == 404
    )


def test_prefer_respond_async_makes_a_job(stack: Stack, models_root: Path) -> None:
    x = np.random.default_rng(6).normal(size=(2, 32)).astype(np.float32)
    body = {
        "id": "async-1",
        "inputs": [{"name": "x", "shape": [2, 32], "datatype": "FP32", "data": x.tolist()}],
    }
    response = requests.post(
        stack.url("/v2/models/tiny/infer"),
        json=body,
        headers={"Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["id"] == "async-1" and answer["state"] in ("QUEUED", "RUNNING", "SUCCEEDED")
    assert response.headers["Location"] == f"/v1/jobs/{answer['job_id']}"
    assert response.headers["Preference-Applied"] == "respond-async"
    done = wait_job(stack, answer["job_id"])
    assert done["state"] == "SUCCEEDED", done
    expected = reference(models_root, "tiny", x=x)["probabilities"]
    np.testing.assert_allclose(done["result"]["outputs"], expected, rtol=1e-5, atol=1e-6)


def test_prefer_wait(stack: Stack, fake_stack: Stack, models_root: Path) -> None:
    x = np.full((1, 32), 0.125, np.float32)
    body = {
        "id": "w",
        "inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP32", "data": x.tolist()}],
    }
    quick = requests.post(
        stack.url("/v2/models/tiny/infer"),
        json=body,
        headers={"Prefer": "respond-async, wait=20"},
        timeout=30,
    )
    assert quick.status_code == 200, quick.text
    assert quick.json()["id"] == "w"
    expected = reference(models_root, "tiny", x=x)["probabilities"]
    np.testing.assert_allclose(
        quick.json()["outputs"][0]["data"], expected[0], rtol=1e-5, atol=1e-6
    )
    slow_body = {
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    slow = requests.post(
        fake_stack.url("/v2/models/slow/infer"),
        json=slow_body,
        headers={"Prefer": "wait=0.05"},
        timeout=30,
    )
    assert slow.status_code == 202, slow.text
    assert wait_job(fake_stack, slow.json()["job_id"])["state"] == "SUCCEEDED"
