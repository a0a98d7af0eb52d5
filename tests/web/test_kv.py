"""The key/value API against a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis
from flask.testing import FlaskClient

from flaskmodel.settings import Settings
from flaskmodel.web import create_app


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> FlaskClient:
    return create_app(make_settings(kv={"max_value_bytes": 1000})).test_client()


def test_put_get_delete(client: FlaskClient, redis_client: redis.Redis) -> None:
    name = f"t-{uuid.uuid4().hex}"
    created = client.put(f"/v1/kv/{name}", json={"value": {"a": [1, 2]}, "ttl": 100})
    assert created.status_code == 201
    assert redis_client.get(f"flaskmodel:kv:{name}") == '{"a":[1,2]}'
    assert 0 < redis_client.ttl(f"flaskmodel:kv:{name}") <= 100
    got = client.get(f"/v1/kv/{name}").get_json()
    assert got["value"] == {"a": [1, 2]} and 0 < got["ttl"] <= 100
    replaced = client.put(f"/v1/kv/{name}", data='{"value": "x"}')  # no content type
    assert replaced.status_code == 200 and replaced.get_json()["ttl"] is None
    assert client.delete(f"/v1/kv/{name}").status_code == 204
    assert client.get(f"/v1/kv/{name}").status_code == 404
    assert client.delete(f"/v1/kv/{name}").status_code == 404


@pytest.mark.parametrize("name", ["a b", "..", "-x", "x" * 201, "a/b", "é"])
def test_bad_key_names(client: FlaskClient, name: str) -> None:
    response = client.put(f"/v1/kv/{name}", json={"value": 1})
    assert response.status_code in (400, 404)
    assert response.get_json()["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"value": 1, "ttl": 0}, "ttl"),
        ({"value": 1, "ttl": "x"}, "ttl"),
        ({"val": 1}, "value"),
        ({"value": "x" * 2000}, "larger"),
    ],
)
def test_bad_values(client: FlaskClient, body: object, needle: str) -> None:
    response = client.put(f"/v1/kv/k-{uuid.uuid4().hex}", json=body)
    assert response.status_code in (400, 413)
    assert needle in response.get_json()["error"]


def test_redis_down_is_503_with_retry_after(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(redis={"url": "redis://127.0.0.1:1/0", "connect_timeout": 0.2}))
    client = app.test_client()
    for response in (
        client.get("/v1/kv/x"),
        client.post("/v1/jobs", json={"model": "m", "inputs": [[1]]}),
    ):
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert "unavailable" in response.get_json()["error"]
    ready = client.get("/readyz")
    assert ready.status_code == 503
