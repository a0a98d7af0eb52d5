"""Bad input at the real gunicorn: hundreds of malformed requests, each answered 4xx with a JSON
body, none 5xx, and no gunicorn worker restarted.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import Stack
from tests.reliability.harness import children

pytestmark = pytest.mark.reliability

JSON = {"Content-Type": "application/json"}
ROW = [0.5] * 32


def gunicorn_master(stack: Stack) -> int:
    bind = "--bind=" + stack.base_url.removeprefix("http://")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if bind.encode() in cmdline and any(b"gunicorn" in part for part in cmdline):
            return int(proc.name)
    raise LookupError(f"no gunicorn bound to {bind}")


def malformed_json(rng: random.Random) -> Iterator[bytes]:
    """Bodies that are not acceptable JSON at all."""
    yield from (b"{", b"[1,2", b"{'model': 'tiny'}", b"nul", b"\x00\x01\x02", b"   ", b"}{")
    yield b"[" * 5000 + b"]" * 5000
    yield b'{"a":' * 3000 + b"1" + b"}" * 3000
    yield b'{"model": "tiny", "inputs": [[NaN]]}'
    yield b'{"model": "tiny", "inputs": [[Infinity, -Infinity]]}'
    yield b'{"model": "tiny", "inputs": [[' + b"9" * 5000 + b"]]}"
    yield b'{"model": "\xff\xfe\xfd", "inputs": [[1]]}'
    yield '{"model": "tiny"}'.encode("utf-16")
    valid = json.dumps({"model": "tiny", "inputs": [ROW, ROW]}).encode()
    for _ in range(40):  # truncated
        yield valid[: rng.randrange(1, len(valid) - 1)]
    for _ in range(15):  # random bytes
        yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))


def wrong_jobs() -> Iterator[object]:
    """Well-formed JSON that ``POST /v1/jobs`` does not accept."""
    yield from (None, 1, "tiny", [], [1, 2], True, 1e308, {})
    yield {"model": "tiny"}
    yield {"inputs": [ROW]}
    yield {"model": 5, "inputs": [ROW]}
    yield {"model": "tiny", "inputs": "x"}
    yield {"model": "tiny", "inputs": [["a"] * 32]}
    yield {"model": "tiny", "inputs": [[0.5] * 31]}
    yield {"model": "tiny", "inputs": [[[0.5] * 32]]}
    yield {"model": "tiny", "inputs": [ROW, [0.5] * 3]}
    yield {"model": "tiny", "inputs": {"x": 5}}
    yield {"model": "tiny", "inputs": {"nope": [ROW]}}
    yield {"model": "tiny", "inputs": [ROW], "bogus": 1}
    yield {"model": "../etc", "inputs": [ROW]}
    yield {"model": "tiny", "version": -1, "inputs": [ROW]}
    yield {"model": "tiny", "version": "one", "inputs": [ROW]}
    yield {"model": "tiny", "inputs": [ROW], "series_uid": "1.2.3"}
    yield {"model": "tiny", "series_uid": "../../etc"}
    yield {"model": "tiny", "series_uid": "x", "slices": {"start": -1}}


def wrong_predictions() -> Iterator[object]:
    """Well-formed JSON that neither TF Serving's ``:predict`` nor V2 ``infer`` accepts."""
    yield from (None, 1, "tiny", [], [1, 2], True, {}, {"model": "tiny"})
    yield {"instances": "x"}
    yield {"instances": []}
    yield {"instances": [[0.5] * 31]}
    yield {"instances": [["a"] * 32]}
    yield {"instances": [{"x": {"b64": "!!notbase64"}}]}
    yield {"instances": [ROW], "inputs": [ROW]}
    yield {"inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP32"}]}
    yield {"inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP99", "data": ROW}]}
    yield {"inputs": [{"name": "x", "shape": [2, 32], "datatype": "FP32", "data": ROW}]}
    yield {"inputs": [{"name": "x", "shape": [-1, 32], "datatype": "FP32", "data": ROW}]}
    yield {"inputs": [{"name": "x", "shape": "1x32", "datatype": "FP32", "data": ROW}]}
    yield {"inputs": [{"name": "x", "shape": [1, 32], "datatype": "BYTES", "data": ROW}]}
    yield {"inputs": [{"name": "nope", "shape": [1, 32], "datatype": "FP32", "data": ROW}]}


POST_ENDPOINTS = ("/v1/jobs", "/v1/models/tiny:predict", "/v2/models/tiny/infer")


def requests_to_send(rng: random.Random, limit: int) -> Iterator[tuple[str, str, bytes, dict]]:
    bodies = list(malformed_json(rng))
    for path in (*POST_ENDPOINTS, "/v1/kv/fuzz"):
        method = "PUT" if path.startswith("/v1/kv") else "POST"
        for body in bodies:
            yield method, path, body, JSON
    for path in POST_ENDPOINTS:
        documents = wrong_jobs() if path == "/v1/jobs" else wrong_predictions()
        for document in documents:
            yield "POST", path, json.dumps(document).encode(), JSON
        valid = json.dumps({"model": "tiny", "inputs": [ROW]}).encode()
        for headers in ({"Content-Type": "text/plain"}, {}):
            yield "POST", path, b"model=tiny&inputs=1", headers
        yield "POST", path, b"x" * (limit + 1), JSON  # over web.max_request_bytes
        yield "POST", path, valid + b"\x00garbage", JSON
    yield "GET", "/v1/jobs/%00%ff", b"", {}
    yield "GET", "/inference/..%2f..%2fetc/0/5", b"", {}
    yield "GET", "/get_result/" + "z" * 300, b"", {}
    yield "GET", "/v1/series/%2e%2e/results", b"", {}
    yield "DELETE", "/v1/jobs/unknown", b"", {}


def test_malformed_requests_get_4xx_json_and_no_restart(stack: Stack) -> None:
    master = gunicorn_master(stack)
    workers_before = children(master)
    rng = random.Random(6)
    limit = stack.settings.web.max_request_bytes
    statuses: Counter[int] = Counter()
    bad: list[str] = []
    session = requests.Session()
    for method, path, body, headers in requests_to_send(rng, limit):
        response = session.request(method, stack.url(path), data=body, headers=headers, timeout=30)
        statuses[response.status_code] += 1
        try:
            is_json = "error" in response.json()
        except ValueError:
            is_json = False
        if not 400 <= response.status_code < 500 or not is_json:
            bad.append(
                f"{method} {path} {body[:60]!r}: {response.status_code} {response.text[:120]}"
            )
    workers_after = children(master)
    total = sum(statuses.values())
    print(
        f"\nbad input: {total} malformed requests → {dict(sorted(statuses.items()))}; "
        f"not 4xx JSON: {len(bad)}; gunicorn workers {workers_before} → {workers_after}"
    )
    assert total >= 300
    assert not bad, "\n".join(bad[:20])
    assert workers_before == workers_after, "a gunicorn worker was restarted"
