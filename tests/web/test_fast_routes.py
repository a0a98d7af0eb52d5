"""``FastRoutes`` answers exactly as the Flask views do: every route of the table, bad input on
every fast route, unknown models, API keys on and off, rate limits (their header fields on every
answer, a limit hit, the client address behind trusted proxies), the same metrics. Both
are driven in process (werkzeug's test client) against the session's real worker and Redis: one
through the fast layer, one straight into Flask. Answers are compared byte for byte, except job
ids, timestamps and names made per client, which are masked alike."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pytest
from flask import Flask
from werkzeug.test import Client, TestResponse

from flaskmodel.demo.series import DEMO_SERIES_UID
from flaskmodel.jobs.keys import owner_index
from flaskmodel.metrics.recorder import METRICS_KEY, RECORDER
from flaskmodel.settings import Settings
from flaskmodel.storage.redis import connect
from flaskmodel.web import create_app
from flaskmodel.web.exposition import recorded_families
from flaskmodel.web.fast_routes import FastRoutes
from flaskmodel.web.routes import ROUTES, route_of
from tests import databases
from tests.conftest import Stack, redis_db

V2_X = {"name": "x", "shape": [1, 32], "datatype": "FP32"}
ROW = {"instances": [[0.5] * 32]}
V2_ROW = {"inputs": [{**V2_X, "data": [0.5] * 32}]}
JOB = {"model": "tiny", "inputs": [[0.5] * 32]}
_IDS = re.compile(r"[0-9a-f]{32}")
_TIMES = re.compile(r'"(\w+)_at":"[^"]*"')
_SECONDS = re.compile(r'"(\w+_seconds)":[-+0-9.e]+')
_RETRY = re.compile(r"retry in [0-9.]+ s")
_PIDS = re.compile(r'"pid":[0-9]+')  # which pool process of the worker ran a job
OPEN_PATHS = ("/healthz", "/readyz", "/v2/health/")


class Counted:
    """The Flask app behind the fast layer, counting the requests handed to it."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app, self.calls = app, 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.calls += 1
        return self.app(environ, start_response)


class Pair:
    """One app, as the fast layer (``fast``) and as Flask alone (``full``)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        layer = app.wsgi_app
        assert isinstance(layer, FastRoutes)
        self.passed = layer.flask = Counted(layer.flask)
        self.fast, self.full = Client(layer), Client(self.passed.app)

    def both(self, method: str, path: str, **kwargs: Any) -> tuple[TestResponse, TestResponse]:
        """The same request through each (``{who}`` in the path: ``fast`` or ``full``)."""
        return tuple(  # type: ignore[return-value]
            client.open(path.replace("{who}", who), method=method, **kwargs)
            for who, client in (("fast", self.fast), ("full", self.full))
        )


def seen(response: TestResponse, who: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body, with job ids, timestamps, timings, worker pids, the client's name
    and the seconds a rate limit asks to wait masked."""
    data = response.get_data()
    headers = dict(response.headers)
    assert int(headers.pop("Content-Length", 0)) == len(data)
    text = data.decode("utf-8", "replace") if data[:1] in (b"{", b"[") else None
    if text is not None:
        text = _TIMES.sub("<time>", _SECONDS.sub(r'"\1":0', _IDS.sub("<id>", text)))
        text = _PIDS.sub('"pid":0', _RETRY.sub("retry in N s", text))
        data = text.replace(who, "<who>").encode()
    if "Location" in headers:
        headers["Location"] = _IDS.sub("<id>", headers["Location"])
    return response.status_code, headers, data


def assert_same(answers: tuple[TestResponse, TestResponse], what: object = None) -> None:
    got, want = seen(answers[0], "fast"), seen(answers[1], "full")
    assert got == want, what


def post_json(body: Any) -> dict[str, Any]:
    return {"data": body if isinstance(body, str) else json.dumps(body)}


@pytest.fixture(scope="module")
def pair(stack: Stack) -> Iterator[Pair]:
    app = create_app(stack.settings)
    yield Pair(app)
    app.extensions["flaskmodel"].sync.close()


@pytest.fixture
def secured(stack: Stack) -> Iterator[Callable[..., Pair]]:
    """Pairs of apps with these ``security`` settings (closed after the test)."""
    apps: list[Flask] = []

    def make(**security: Any) -> Pair:
        settings = stack.settings.model_copy(
            update={"security": stack.settings.security.model_copy(update=security)}
        )
        apps.append(create_app(Settings.model_validate(settings.model_dump())))
        return Pair(apps[-1])

    yield make
    for app in apps:
        app.extensions["flaskmodel"].sync.close()


# Bad input (and a few good ones) for the fast routes that take a body.
BODIES: list[tuple[str, Any]] = [
    ("/v1/models/tiny:predict", {"instances": np.linspace(0, 1, 64).reshape(2, 32).tolist()}),
    ("/v1/models/tiny/versions/1:predict", {"inputs": {"x": [[0.5] * 32]}}),
    ("/v1/models/tiny/versions/x:predict", ROW),
    ("/v1/models/tiny/labels/nope:predict", ROW),
    ("/v1/models/ghost:predict", ROW),
    ("/v1/models/tiny:predict", {"instances": [[1.0] * 31]}),
    ("/v1/models/tiny:predict", {"signature_name": "other", "instances": [[1.0] * 32]}),
    ("/v1/models/tiny:predict", {"instances": [[1.0] * 32], "inputs": {}}),
    ("/v1/models/tiny:predict", {}),
    ("/v1/models/tiny:predict", "{nope"),
    ("/v1/models/tiny:predict", ""),
    ("/v1/models/tiny:predict", "[NaN]"),
    ("/v1/models/tiny:classify", {"examples": []}),
    ("/v1/models/tiny:explain", ROW),
    ("/v1/models/tiny", ROW),
    ("/v1/models/m\u2028\r\nx:predict", ROW),  # named in the error
    ("/v2/models/tiny/infer", {"id": "a", "inputs": [{**V2_X, "data": [0.25] * 32}]}),
    ("/v2/models/tiny/versions/1/infer", V2_ROW),
    ("/v2/models/tiny/versions/x/infer", V2_ROW),
    ("/v2/models/tiny/versions/9/infer", V2_ROW),
    ("/v2/models/ghost/infer", V2_ROW),
    ("/v2/models/tiny/infer", {"inputs": [{**V2_X, "datatype": "BOOL", "data": [1] * 32}]}),
    ("/v2/models/tiny/infer", {"inputs": [{**V2_X, "data": [0.5] * 31}]}),
    ("/v2/models/tiny/infer", {"inputs": [{**V2_X, "data": [0.5] * 32}], "outputs": [{}]}),
    ("/v2/models/tiny/infer", {**V2_ROW, "parameters": {"timeout": -1}}),
    ("/v2/models/tiny/infer", "[]"),
    ("/v2/models/tiny/infer", "{nope"),
    ("/v2/models/t\u00fcny/infer", V2_ROW),
    ("/v1/jobs", {"model": "ghost", "inputs": [[1.0] * 32]}),
    ("/v1/jobs", {"model": "tiny"}),
    ("/v1/jobs", {"model": "tiny", "inputs": [[1.0] * 32], "priority": "urgent"}),
    ("/v1/jobs", "{nope"),
    ("/v1/jobs", "[1, 2]"),
]


@pytest.mark.parametrize(("path", "body"), BODIES)
def test_bodies_are_answered_as_flask_does(pair: Pair, path: str, body: Any) -> None:
    before = pair.passed.calls
    assert_same(pair.both("POST", path, **post_json(body), content_type="application/json"))
    assert pair.passed.calls == before, "a fast route went to Flask"


def test_bad_headers_queries_and_sizes_are_answered_as_flask_does(pair: Pair) -> None:
    blob = np.arange(32, dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{**V2_X, "parameters": {"binary_data_size": 128}}]}).encode()
    for length in ("abc", "-1", str(len(header) + 500), str(len(header))):
        answers = pair.both(
            "POST",
            "/v2/models/tiny/infer",
            data=header + blob,
            headers={"Inference-Header-Content-Length": length},
        )
        assert_same(answers, length)
    too_big = b" " * (pair.app.config["MAX_CONTENT_LENGTH"] + 1)
    for path in ("/v1/models/tiny:predict", "/v2/models/tiny/infer", "/v1/jobs"):
        answers = pair.both("POST", path, data=too_big)
        assert answers[0].status_code == 413, answers[0].get_data()
        assert_same(answers, path)
    for path in ("/v1/jobs/nope", "/v1/jobs/nope?wait=x", "/v1/jobs/nope?wait=-1"):
        assert_same(pair.both("GET", path), path)
    assert_same(pair.both("GET", "/v1/jobs/nope?wait=%C2%B2&wait=1"))


def test_binary_tensors_are_answered_as_flask_does(pair: Pair) -> None:
    blob = np.arange(32, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [{**V2_X, "parameters": {"binary_data_size": len(blob)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    answers = pair.both(
        "POST",
        "/v2/models/tiny/infer",
        data=header + blob,
        headers={"Inference-Header-Content-Length": str(len(header))},
        content_type="application/octet-stream",
    )
    assert answers[0].status_code == 200
    assert answers[0].headers["Content-Type"] == "application/octet-stream"
    assert_same(answers)


def test_a_chunked_body_is_read_as_flask_reads_it(pair: Pair) -> None:
    body = json.dumps(ROW).encode()
    answers = tuple(
        client.post(
            "/v1/models/tiny:predict",
            input_stream=io.BytesIO(body),
            headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            environ_overrides={"wsgi.input_terminated": True},
        )
        for client in (pair.fast, pair.full)
    )
    assert answers[0].status_code == 200, answers[0].get_data()
    assert_same(answers)  # type: ignore[arg-type]


# One request per route of the table at least, in an order that makes each answer the same
# for both clients ({job}: the client's own job, {who}: its name).
TOUR: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/healthz", {}),
    ("GET", "/readyz", {}),
    ("GET", "/metrics", {}),
    ("POST", "/v1/jobs", {"json": JOB, "headers": {"Idempotency-Key": "tour-{who}"}}),
    ("GET", "/v1/jobs/{job}?wait=30", {}),
    ("POST", "/v1/jobs", {"json": JOB, "headers": {"Idempotency-Key": "tour-{who}"}}),
    ("GET", "/v1/jobs?limit=1", {}),
    ("DELETE", "/v1/jobs/{job}", {}),
    ("GET", "/v1/jobs/{job}/slices/0/thumbnail.png", {}),
    ("GET", "/get_result/{job}", {}),
    ("POST", "/v1/jobs", {"json": JOB, "headers": {"Prefer": "wait=30"}}),
    ("PUT", "/v1/kv/tour-{who}", {"json": {"value": {"a": [1, 2]}, "ttl": 60}}),
    ("PUT", "/v1/kv/tour-{who}", {"json": {"value": 3}}),
    ("GET", "/v1/kv/tour-{who}", {}),
    ("DELETE", "/v1/kv/tour-{who}", {}),
    ("GET", "/v1/kv/tour-{who}", {}),
    ("GET", "/v1/series/1.2.3", {}),
    ("GET", "/v1/series/1.2.3/results", {}),
    ("GET", "/v1/series/bad%20id/results", {}),
    ("GET", f"/inference/{DEMO_SERIES_UID}/0/2", {}),
    ("GET", "/inference/bad%20id/0/2", {}),
    ("GET", "/v1/models/tiny", {}),
    ("GET", "/v1/models/tiny/versions/1", {}),
    ("GET", "/v1/models/tiny/metadata", {}),
    ("GET", "/v1/models/ghost", {}),
    ("POST", "/v1/models/tiny:predict", {"json": ROW}),
    ("GET", "/v2", {}),
    ("GET", "/v2/health/live", {}),
    ("GET", "/v2/health/ready", {}),
    ("GET", "/v2/models/tiny", {}),
    ("GET", "/v2/models/tiny/versions/1", {}),
    ("GET", "/v2/models/ghost", {}),
    ("GET", "/v2/models/tiny/ready", {}),
    ("GET", "/v2/models/tiny/versions/1/ready", {}),
    ("POST", "/v2/models/tiny/infer", {"json": V2_ROW}),
    ("POST", "/v2/models/tiny/versions/1/infer", {"json": {**V2_ROW, "id": "v"}}),
    ("POST", "/v2/models/tiny/infer", {"json": V2_ROW, "headers": {"Prefer": "respond-async"}}),
    ("POST", "/v2/models/tiny/infer", {"json": V2_ROW, "headers": {"Prefer": "wait=30"}}),
]


def tour(
    pair: Pair,
    steps: list[tuple[str, str, dict[str, Any]]],
    environ: dict[str, dict[str, Any]] | None = None,
    **common: Any,
) -> set[Any]:
    """Every step through both clients, compared; the (rule, method) pairs of the table seen.
    Fast routes must be answered by the fast layer, the others handed to Flask. ``environ``:
    WSGI environ values of each client's requests (``fast``, ``full``)."""
    urls = pair.app.url_map.bind("localhost")
    jobs = {"fast": "", "full": ""}
    covered = set()
    for method, template, options in steps:
        answers = []
        for who, client in (("fast", pair.fast), ("full", pair.full)):
            path = template.replace("{who}", who).replace("{job}", jobs[who])
            headers = {k: v.replace("{who}", who) for k, v in options.get("headers", {}).items()}
            before = pair.passed.calls
            answer = client.open(
                path,
                method=method,
                environ_overrides=(environ or {}).get(who),
                **{**options, "headers": {**common, **headers}},
            )
            answers.append(answer)
            rule, _ = urls.match(path.partition("?")[0], method, return_rule=True)
            route = route_of(rule)
            assert route is not None, path
            covered.add((route.rule, method))
            if who == "fast":
                assert (pair.passed.calls == before) == route.fast, (method, path)
            if route.rule == "/v1/jobs" and method == "POST" and answer.status_code == 202:
                jobs[who] = answer.get_json()["job_id"]
        if template == "/metrics":  # counts move between the two
            assert [a.status_code for a in answers] == [200, 200]
            assert answers[0].headers["Content-Type"] == answers[1].headers["Content-Type"]
            continue
        assert_same((answers[0], answers[1]), (method, template))
    return covered


def test_every_route_of_the_table_answers_as_flask_does(pair: Pair) -> None:
    covered = tour(pair, TOUR)
    assert covered == {(r.rule, m) for r in ROUTES for m in r.methods}


def test_with_api_keys_the_fast_layer_checks_them_as_flask_does(
    secured: Callable[..., Pair],
) -> None:
    alice, bob = (f"{name}-{uuid.uuid4().hex}" for name in ("alice", "bob"))
    pair = secured(api_keys=[f"alice {alice}", f"bob {bob}"])
    for headers in ({}, {"X-API-Key": "wrong-" + "x" * 20}, {"Authorization": f"Basic {alice}"}):
        for method, path in (("POST", "/v1/models/tiny:predict"), ("GET", "/v1/jobs/nope")):
            answers = pair.both(method, path, json=ROW, headers=headers)
            assert answers[0].status_code == 401
            assert answers[0].headers["WWW-Authenticate"].startswith("Bearer")
            assert_same(answers, (headers, path))
    covered = tour(pair, TOUR, Authorization=f"Bearer {alice}")
    assert covered == {(r.rule, m) for r in ROUTES for m in r.methods}
    # A job is its key's: another key is told it does not exist, by either adapter.
    job_id = pair.fast.post("/v1/jobs", json=JOB, headers={"X-API-Key": alice}).get_json()
    path = f"/v1/jobs/{job_id['job_id']}"
    theirs = pair.both("GET", path, headers={"X-API-Key": bob})
    assert theirs[0].status_code == 404
    assert_same(theirs)
    assert pair.fast.get(path, headers={"X-API-Key": alice}).status_code == 200


def test_a_rate_limit_is_hit_alike(secured: Callable[..., Pair]) -> None:
    alice, bob = (f"{name}-{uuid.uuid4().hex}" for name in ("alice", "bob"))
    pair = secured(
        api_keys=[f"alice{alice[-8:]} {alice}", f"bob{bob[-8:]} {bob}"],
        rate_limit_per_second=0.001,
        rate_limit_burst=2,
    )
    keys = {"fast": {"X-API-Key": alice}, "full": {"X-API-Key": bob}}
    answers = {
        who: [client.post("/v1/models/tiny:predict", json=ROW, headers=keys[who]) for _ in "abc"]
        for who, client in (("fast", pair.fast), ("full", pair.full))
    }
    assert [a.status_code for a in answers["fast"]] == [200, 200, 429]
    for got, want in zip(answers["fast"], answers["full"], strict=True):
        assert seen(got, "fast") == seen(want, "full")
    refused = answers["fast"][2]
    assert refused.get_json()["type"] == "rate_limited"
    assert refused.headers["Retry-After"] == "1000"
    # 2 requests per 2000 s; one more 1000 s after each (its Retry-After when refused).
    assert [(a.headers["RateLimit-Policy"], a.headers["RateLimit"]) for a in answers["fast"]] == [
        ('"default";q=2;w=2000', f'"default";r={left};t=1000') for left in (1, 0, 0)
    ]
    assert pair.passed.calls == 0, "the fast layer handed a request to Flask"


def test_a_refused_request_does_nothing_it_asked_for(
    secured: Callable[..., Pair], stack: Stack
) -> None:
    """The fast layer leaves an infer's count to its handler (made with the push of its frame,
    ``tests/sync/test_channel.py``), but a ``Prefer: respond-async`` infer is counted before its
    job is made: refused, it makes none, through the fast layer as through Flask."""
    owner, dave = f"dave{uuid.uuid4().hex[:8]}", f"dave-{uuid.uuid4().hex}"
    pair = secured(api_keys=[f"{owner} {dave}"], rate_limit_per_second=0.001, rate_limit_burst=1)
    headers = {"X-API-Key": dave}
    client = connect(stack.settings)
    assert pair.fast.post("/v1/models/tiny:predict", json=ROW, headers=headers).status_code == 200
    asked = {"json": V2_ROW, "headers": {**headers, "Prefer": "respond-async"}}
    answers = pair.both("POST", "/v2/models/tiny/infer", **asked)
    assert [a.status_code for a in answers] == [429, 429]
    assert_same(answers)
    assert client.zcard(owner_index(owner)) == 0, "a refused request made a job"
    refused = pair.fast.post("/v2/models/tiny/infer", json=V2_ROW, headers=headers)
    assert refused.status_code == 429
    assert refused.headers["RateLimit"] == '"default";r=0;t=1000'
    assert pair.passed.calls == 0, "the fast layer handed a request to Flask"
    client.close()


def test_a_sync_call_is_counted_with_its_push(
    secured: Callable[..., Pair], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No round trip of its own for the count of a predict or infer that reaches the push; one
    that fails before it (bad input) is counted after its handler, as if before it."""
    erin = f"erin-{uuid.uuid4().hex}"
    pair = secured(api_keys=[erin], rate_limit_per_second=0.001, rate_limit_burst=10)
    limiter = pair.app.extensions["flaskmodel"].rate_limiter
    checks: list[str] = []
    check = limiter._checks.call
    monkeypatch.setattr(limiter._checks, "call", lambda key: (checks.append(key), check(key))[1])
    headers = {"Authorization": f"Bearer {erin}"}
    sent = [
        pair.fast.post("/v1/models/tiny:predict", json=ROW, headers=headers),
        pair.fast.post("/v2/models/tiny/infer", json=V2_ROW, headers=headers),
    ]
    assert [a.status_code for a in sent] == [200, 200]
    assert checks == []
    bad = pair.fast.post("/v1/models/tiny:predict", json={"instances": [[1.0]]}, headers=headers)
    assert bad.status_code == 400
    assert len(checks) == 1
    fields = [a.headers["RateLimit"] for a in (*sent, bad)]
    assert fields == [f'"default";r={left};t=1000' for left in (9, 8, 7)]


def test_every_route_carries_the_same_rate_limit_fields(secured: Callable[..., Pair]) -> None:
    """Keyless callers, each client from its own address (so its own bucket, which refills
    nothing during the test): every answer of the tour, the limit's fields included, alike."""
    pair = secured(rate_limit_per_second=0.001, rate_limit_burst=1000)
    net = uuid.uuid4().int % 250
    environ = {who: {"REMOTE_ADDR": f"10.{net}.7.{i}"} for i, who in enumerate(("fast", "full"))}
    # Idempotency keys and key names of this test's own (the first tour's belong to no key too).
    steps = [
        (method, path, json.loads(json.dumps(options).replace("tour-", f"rate-{net}-")))
        for method, path, options in TOUR
    ]
    covered = tour(pair, steps, environ=environ)
    assert covered == {(r.rule, m) for r in ROUTES for m in r.methods}
    fast = pair.fast.get("/v1/jobs/nope", environ_overrides=environ["fast"])
    assert fast.headers["RateLimit-Policy"] == '"default";q=1000;w=1000000'
    left = 1000 - sum(1 for _, path, _ in TOUR if not path.startswith(OPEN_PATHS)) - 1
    assert fast.headers["RateLimit"] == f'"default";r={left};t=1000'
    assert "RateLimit" not in pair.fast.get("/healthz").headers


def test_both_find_the_client_behind_trusted_proxies_alike(secured: Callable[..., Pair]) -> None:
    """From a trusted proxy (loopback, the default) the bucket is the right-most address it
    forwards, whatever the client claimed before it; from any other peer, the peer's."""
    pair = secured(rate_limit_per_second=0.001, rate_limit_burst=2)
    net = uuid.uuid4().int % 250

    def ask(client: Client, peer: str, forwarded: str) -> TestResponse:
        return client.post(
            "/v1/models/tiny:predict",
            json=ROW,
            headers={"X-Forwarded-For": forwarded},
            environ_overrides={"REMOTE_ADDR": peer},
        )

    # Behind the proxy, each adapter's client its own address and bucket, spoofed claims apart.
    answers = {
        who: [ask(client, "127.0.0.1", f"198.51.100.{i}, 10.{net}.8.{n}") for i in range(3)]
        for n, (who, client) in enumerate((("fast", pair.fast), ("full", pair.full)))
    }
    assert [a.status_code for a in answers["fast"]] == [200, 200, 429]
    for got, want in zip(answers["fast"], answers["full"], strict=True):
        assert seen(got, "fast") == seen(want, "full")
    # An untrusted peer is its own bucket whatever it forwards, whichever adapter counts.
    untrusted = f"10.{net}.9.1"
    statuses = [
        ask(client, untrusted, f"10.{net}.9.{i + 2}").status_code
        for i, client in enumerate((pair.fast, pair.full, pair.fast))
    ]
    assert statuses == [200, 200, 429]
    assert pair.passed.calls == 0, "the fast layer handed a request to Flask"


def test_one_bucket_per_key_whichever_adapter_counts(secured: Callable[..., Pair]) -> None:
    carol = f"carol-{uuid.uuid4().hex}"
    pair = secured(api_keys=[carol], rate_limit_per_second=0.001, rate_limit_burst=2)
    headers = {"Authorization": f"Bearer {carol}"}
    statuses = [
        client.get("/v1/jobs/nope", headers=headers).status_code
        for client in (pair.fast, pair.full, pair.fast, pair.full)
    ]
    assert statuses == [404, 404, 429, 429]
    # The open probes are never limited.
    assert pair.fast.get("/healthz").status_code == pair.full.get("/healthz").status_code == 200


def test_both_count_the_same_metrics(stack: Stack, redis_url: str) -> None:
    """Counted under the route's label, errors by type, by the same flusher: here into a
    database of their own, read after a flush."""
    settings = stack.settings.model_copy(
        update={
            "redis": stack.settings.redis.model_copy(
                update={"url": redis_db(redis_url, databases.FAST_ROUTES)}
            )
        }
    )
    pair = Pair(create_app(Settings.model_validate(settings.model_dump())))
    client = connect(pair.app.extensions["flaskmodel"].settings)
    pair.fast.get("/healthz")  # the flusher now sends this app's counts to its database
    RECORDER.take()  # earlier tests' counts, not flushed yet: not this test's
    client.delete(METRICS_KEY)
    for _ in range(3):
        pair.both("GET", "/v1/jobs/nope")
        pair.both("POST", "/v1/jobs", data="{nope")
    RECORDER.flush(client)
    raw = client.hgetall(METRICS_KEY)
    client.close()
    pair.app.extensions["flaskmodel"].sync.close()
    totals = {
        (
            family.name,
            sample.labels.get("route"),
            sample.labels.get("type"),
            sample.labels.get("status"),
        ): sample.value
        for family in recorded_families(raw)
        for sample in family.samples
        if sample.name.endswith(("_total", "_count"))
    }
    assert totals[("flaskmodel_http_requests", "/v1/jobs/<job_id>", None, "404")] == 6
    assert totals[("flaskmodel_http_requests", "/v1/jobs", None, "400")] == 6
    assert totals[("flaskmodel_errors", None, "job_not_found", None)] == 6
    assert totals[("flaskmodel_errors", None, "invalid_request", None)] == 6
