"""Requests the OpenAPI fuzz run (``tests/reliability/test_openapi_fuzz.py``) found answered with
a server error, each now a clear 4xx JSON answer."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from flaskmodel.settings import Settings
from flaskmodel.web import create_app


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> FlaskClient:
    return create_app(make_settings()).test_client()


@pytest.mark.parametrize("ttl", [821280895527682586265560895455232, 10**12])
def test_a_ttl_redis_cannot_store_is_refused(client: FlaskClient, ttl: int) -> None:
    """Redis refused the expiry ("invalid expire time"), answered as 503 Redis unavailable."""
    response = client.put(f"/v1/kv/t-{uuid.uuid4().hex}", json={"value": 122, "ttl": ttl})
    assert response.status_code in (400, 422), response.get_json()
    assert "ttl" in response.get_json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs?limit=%C2%B2",  # "²": str.isdigit() says yes, int() says no (was a 500)
        "/v1/models/m/versions/%C2%B2",
        "/v2/models/m/versions/%C2%B2/ready",
    ],
)
def test_non_ascii_digits_are_a_400(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]
