"""``FastPredict`` answers ``:predict`` exactly as the Flask route does, and leaves to Flask what
it does not handle. Both are driven in process (werkzeug's test client) against the session's
real worker and Redis: one through the middleware, one straight into Flask."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from werkzeug.test import Client

from flaskmodel.settings import Settings
from flaskmodel.web import create_app
from flaskmodel.web.fast_predict import FastPredict
from tests.conftest import Stack

KEY = "s3cret-s3cret-s3cret"
V2_X = {"name": "x", "shape": [1, 32], "datatype": "FP32"}
BODIES: list[tuple[str, Any]] = [
    ("/v1/models/tiny:predict", {"instances": np.linspace(0, 1, 64).reshape(2, 32).tolist()}),
    ("/v1/models/tiny/versions/1:predict", {"inputs": {"x": [[0.5] * 32]}}),
    ("/v1/models/tiny/labels/nope:predict", {"instances": [[1.0] * 32]}),
    ("/v1/models/ghost:predict", {"instances": [[1.0] * 32]}),
    ("/v1/models/tiny:predict", {"instances": [[1.0] * 31]}),
    ("/v1/models/tiny:predict", {"signature_name": "other", "instances": [[1.0] * 32]}),
    ("/v1/models/tiny:predict", "{nope"),
    ("/v1/models/tiny:classify", {"examples": []}),
    ("/v1/models/tiny", {"instances": [[1.0] * 32]}),
    ("/v2/models/tiny/infer", {"id": "a", "inputs": [{**V2_X, "data": [0.25] * 32}]}),
    ("/v2/models/tiny/versions/1/infer", {"inputs": [{**V2_X, "data": [0.5] * 32}]}),
    ("/v2/models/tiny/versions/x/infer", {"inputs": [{**V2_X, "data": [0.5] * 32}]}),
    ("/v2/models/ghost/infer", {"inputs": [{**V2_X, "data": [0.5] * 32}]}),
    ("/v2/models/tiny/infer", {"inputs": [{**V2_X, "datatype": "BOOL", "data": [1] * 32}]}),
    ("/v2/models/tiny/infer", {"inputs": [{**V2_X, "data": [0.5] * 32}], "outputs": [{}]}),
    ("/v2/models/tiny/infer", "[]"),
    ("/v1/models/m\u2028\r\nx:predict", {"instances": [[1.0] * 32]}),  # named in the error
    ("/v2/models/t\u00fcny/infer", {"inputs": [{**V2_X, "data": [0.5] * 32}]}),
]


@pytest.fixture(scope="module")
def clients(stack: Stack) -> Iterator[tuple[Client, Client]]:
    app = create_app(stack.settings)
    assert isinstance(app.wsgi_app, FastPredict)
    yield Client(app.wsgi_app), Client(app.wsgi_app.flask)
    app.extensions["flaskmodel"].sync.close()


@pytest.mark.parametrize(("path", "body"), BODIES)
def test_answers_are_flasks(clients: tuple[Client, Client], path: str, body: Any) -> None:
    fast, flask = clients
    data = body if isinstance(body, str) else json.dumps(body)
    got = fast.post(path, data=data, content_type="application/json")
    want = flask.post(path, data=data, content_type="application/json")
    assert (got.status_code, got.get_json()) == (want.status_code, want.get_json())
    assert got.headers.get("Retry-After") == want.headers.get("Retry-After")
    assert got.headers["Content-Type"] == want.headers["Content-Type"] == "application/json"


def test_binary_tensors_are_flasks(clients: tuple[Client, Client]) -> None:
    fast, flask = clients
    blob = np.arange(32, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [{**V2_X, "parameters": {"binary_data_size": len(blob)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    answers = [
        client.post(
            "/v2/models/tiny/infer",
            data=header + blob,
            headers={"Inference-Header-Content-Length": str(len(header))},
            content_type="application/octet-stream",
        )
        for client in (fast, flask)
    ]
    got, want = answers
    assert got.status_code == want.status_code == 200
    assert got.get_data() == want.get_data()
    for name in ("Content-Type", "Inference-Header-Content-Length"):
        assert got.headers[name] == want.headers[name]


def test_requests_it_does_not_handle_go_to_flask(clients: tuple[Client, Client]) -> None:
    fast, _ = clients
    assert fast.get("/v1/models/tiny").status_code == 200  # status: not a POST
    job = fast.post(  # Prefer: a job, which Flask makes
        "/v2/models/tiny/infer",
        json={"inputs": [{**V2_X, "data": [0.5] * 32}]},
        headers={"Prefer": "respond-async"},
    )
    assert job.status_code == 202 and job.headers["Preference-Applied"] == "respond-async"
    streamed = fast.post(  # chunked, no Content-Length: Flask reads it to its end
        "/v1/models/tiny:predict",
        input_stream=io.BytesIO(json.dumps({"instances": [[1.0] * 32]}).encode()),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert streamed.status_code == 200, streamed.get_data()


def test_with_api_keys_flask_answers(stack: Stack) -> None:
    secured = stack.settings.model_copy(
        update={
            "security": stack.settings.security.model_copy(
                update={"api_keys": ["s3cret-s3cret-s3cret"]}
            )
        }
    )
    app = create_app(Settings.model_validate(secured.model_dump()))
    client = Client(app.wsgi_app)
    body = json.dumps({"instances": [[1.0] * 32]})
    refused = client.post("/v1/models/tiny:predict", data=body)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"]
    allowed = client.post(
        "/v1/models/tiny:predict",
        data=body,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert allowed.status_code == 200, allowed.get_data()
    app.extensions["flaskmodel"].sync.close()


def test_job_routes_answer_as_flasks(clients: tuple[Client, Client]) -> None:
    fast, flask = clients
    job = {"model": "tiny", "inputs": [[0.5] * 32]}
    submitted = [c.post("/v1/jobs", json=job) for c in (fast, flask)]
    assert [r.status_code for r in submitted] == [202, 202]
    for response in submitted:
        body = response.get_json()
        assert set(body) == {"job_id", "state", "status_url"} and body["state"] == "QUEUED"
        assert response.headers["Location"] == body["status_url"] == f"/v1/jobs/{body['job_id']}"
    job_id = submitted[0].get_json()["job_id"]
    got, want = (c.get(f"/v1/jobs/{job_id}?wait=30") for c in (fast, flask))
    assert got.status_code == want.status_code == 200
    assert got.get_json() == want.get_json() and got.get_json()["state"] == "SUCCEEDED"
    waited = [c.post("/v1/jobs", json=job, headers={"Prefer": "wait=30"}) for c in (fast, flask)]
    assert [r.status_code for r in waited] == [200, 200]
    results = [r.get_json()["result"]["predictions"] for r in waited]
    assert results[0] == results[1]
    key = {"Idempotency-Key": "fast-path-key"}
    first = fast.post("/v1/jobs", json=job, headers=key)
    again = flask.post("/v1/jobs", json=job, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.get_json()["job_id"] == again.get_json()["job_id"]
    for path in ("/v1/jobs/nope", f"/v1/jobs/{job_id}?wait=x", f"/v1/jobs/{job_id}?wait=-1"):
        got, want = (c.get(path) for c in (fast, flask))
        assert (got.status_code, got.get_json()) == (want.status_code, want.get_json()), path
    for body in ({"model": "ghost", "inputs": [[1.0] * 32]}, {"model": "tiny"}, "{nope"):
        data = body if isinstance(body, str) else json.dumps(body)
        got, want = (c.post("/v1/jobs", data=data) for c in (fast, flask))
        assert (got.status_code, got.get_json()) == (want.status_code, want.get_json()), body
