"""``/openapi.json`` covers every route and validates; ``/docs`` works with no network."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from flaskmodel.settings import Settings
from flaskmodel.web import create_app

HIDDEN = {"static", "ui.ui_asset"}


@pytest.fixture
def app() -> Flask:
    # Nothing here talks to Redis: an unreachable URL proves it.
    return create_app(Settings(redis={"url": "redis://127.0.0.1:1/0"}))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_route_is_documented_with_its_methods(app: Flask, spec: dict[str, Any]) -> None:
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in HIDDEN or rule.endpoint.startswith("openapi."):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in spec["paths"], path
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operation = spec["paths"][path][method.lower()]
            assert operation["responses"], (path, method)
            checked += 1
    assert checked >= 25
    assert not any(p.startswith(("/docs", "/openapi", "/static", "/ui/{")) for p in spec["paths"])


def test_spec_validates_as_openapi_31(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def test_refs_resolve_and_path_params_are_typed(spec: dict[str, Any]) -> None:
    for ref in _refs(spec):
        assert _resolve(spec, ref) is not None, ref
    for path, item in spec["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        for operation in item.values():
            declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
            assert set(declared) == names, path
            assert {"4XX", "5XX"} <= set(operation["responses"]), path
    params = spec["paths"]["/inference/{series_uid}/{start}/{end}"]["get"]["parameters"]
    types = {p["name"]: p["schema"]["type"] for p in params if p["in"] == "path"}
    assert types == {"series_uid": "string", "start": "integer", "end": "integer"}


def test_error_schema_and_job_request_come_from_the_models(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert set(schemas["ErrorBody"]["properties"]) == {"error", "type"}
    assert "series_uid" in schemas["JobRequest"]["properties"]
    assert "SliceRange" in schemas
    post = spec["paths"]["/v1/jobs"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/JobRequest"}
    headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key", "Prefer"}  # the route's own, from the route table
    accepted = post["responses"]["202"]["content"]["application/json"]["schema"]
    assert accepted == {"$ref": "#/components/schemas/SubmitResponse"}
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    assert infer["content"]["application/json"]["schema"]["$ref"].endswith("/InferRequest")
    assert spec["info"]["version"]
    assert {"jobs", "kv", "infer_v2", "predict_v1"} <= {t["name"] for t in spec["tags"]}


def test_spec_is_cached_per_app(app: Flask, client: FlaskClient) -> None:
    first = client.get("/openapi.json").get_json()
    assert app.extensions["flaskmodel.openapi"] == first
    assert client.get("/openapi.json").get_json() == first


def test_docs_page_is_offline(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3
    for url in [*assets, *re.findall(r'url: "([^"]+)"', html)]:
        assert url.startswith("/"), url
        with client.get(url) as asset:  # closes the streamed file
            assert asset.status_code == 200, url
    assert "validatorUrl: null" in html  # else Swagger UI calls validator.swagger.io
    assert client.get("/docs/assets/no-such-file.js").status_code == 404


def test_api_key_schemes_are_declared_where_a_key_may_be_asked_for(
    spec: dict[str, Any],
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key as the token",
    }
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    jobs = spec["paths"]["/v1/jobs"]["post"]
    assert jobs["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}, {}]
    assert "security" not in spec["paths"]["/healthz"]["get"]  # probes stay open


def test_the_legacy_inference_route_is_deprecated_in_favour_of_v1_jobs(
    spec: dict[str, Any], client: FlaskClient
) -> None:
    legacy = spec["paths"]["/inference/{series_uid}/{start}/{end}"]["get"]
    assert legacy["deprecated"] is True
    assert "POST /v1/jobs" in legacy["description"]
    # The route that replaces it, and every other, is current.
    deprecated = [
        (path, method)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if operation.get("deprecated")
    ]
    assert deprecated == [("/inference/{series_uid}/{start}/{end}", "get")]
