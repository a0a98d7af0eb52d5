"""Per-caller rate limits, enforced in Redis and shared by every gunicorn worker: counted 200s
against 429s through real gunicorn (two workers) and real Redis."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from flaskmodel.settings import Settings
from flaskmodel.storage.redis import connect
from flaskmodel.web.ratelimit import RateLimiter
from tests import databases, procs
from tests.conftest import redis_db

KEY_A = "key-a-" + "1" * 20
KEY_B = "key-b-" + "2" * 20


@contextmanager
def web(settings: Settings, logs: Path) -> Iterator[str]:
    port = procs.free_port()
    proc = procs.start_gunicorn(settings, logs / "gunicorn.log", port, workers=2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop(proc)


def settings_for(tmp_path: Path, redis_url: str, **security: Any) -> Settings:
    return Settings(
        models_root=tmp_path,
        data_root=tmp_path,
        run_dir=tmp_path,
        redis={"url": redis_db(redis_url, databases.RATE_LIMIT)},
        security=security,
    )


def burst(call: Callable[[], requests.Response], n: int) -> list[requests.Response]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: call(), range(n)))


def test_per_key_limit_is_shared_by_all_workers(tmp_path: Path, redis_url: str) -> None:
    rate, size = 5.0, 10
    settings = settings_for(
        tmp_path,
        redis_url,
        api_keys=[f"a {KEY_A}", f"b {KEY_B}"],
        rate_limit_per_second=rate,
        rate_limit_burst=size,
    )
    with web(settings, tmp_path) as base:
        session = requests.Session()
        url = base + "/v1/jobs?limit=1"
        # Another "host" (this test process) takes 4 from key A's bucket first: the gunicorn
        # workers must see that, since they share one bucket in Redis.
        client = connect(settings)
        elsewhere = RateLimiter(client, per_second=rate, burst=size)
        started = time.monotonic()
        assert [elsewhere.check("key:a") for _ in range(4)] == [None] * 4
        client.close()
        answers = burst(lambda: session.get(url, headers={"X-API-Key": KEY_A}, timeout=10), 60)
        elapsed = time.monotonic() - started
        counts = Counter(r.status_code for r in answers)
        other = session.get(url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=10)
        health = [session.get(base + "/healthz", timeout=10).status_code for _ in range(20)]
    print(
        f"\nkey A: {dict(counts)} in {elapsed:.2f} s (rate {rate}/s, burst {size}); key B: "
        f"{other.status_code}; /healthz: {Counter(health)}"
    )
    assert set(counts) <= {200, 429}
    # The burst, plus what the rate refilled while the requests ran (and one for rounding).
    allowed = size - 4
    assert allowed <= counts[200] <= allowed + math.ceil(rate * elapsed) + 1
    assert counts[429] >= 60 - allowed - math.ceil(rate * elapsed) - 1
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["type"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert other.status_code == 200, "key B has its own bucket"
    assert set(health) == {200}, "health probes are never limited"


def test_retry_after_comes_from_the_bucket(tmp_path: Path, redis_url: str) -> None:
    # One request every 2 s, three at once: the fourth must wait the full 2 s.
    settings = settings_for(
        tmp_path, redis_url, api_keys=[KEY_A], rate_limit_per_second=0.5, rate_limit_burst=3
    )
    with web(settings, tmp_path) as base:
        url = base + "/v1/jobs?limit=1"
        headers = {"X-API-Key": KEY_A}
        statuses = [requests.get(url, headers=headers, timeout=10).status_code for _ in range(3)]
        refused = requests.get(url, headers=headers, timeout=10)
        assert statuses == [200, 200, 200]
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2"
        time.sleep(2.05)
        assert requests.get(url, headers=headers, timeout=10).status_code == 200
        assert requests.get(url, headers=headers, timeout=10).status_code == 429


def test_without_auth_callers_are_limited_per_address(tmp_path: Path, redis_url: str) -> None:
    settings = settings_for(tmp_path, redis_url, rate_limit_per_second=0.5, rate_limit_burst=2)
    with web(settings, tmp_path) as base:
        url = base + "/v1/jobs?limit=1"

        def status(address: str) -> int:
            # Behind a local proxy (nginx) the caller is the address it appended.
            headers = {"X-Forwarded-For": f"198.51.100.7, {address}"}
            return requests.get(url, headers=headers, timeout=10).status_code

        first = [status("203.0.113.1") for _ in range(3)]
        second = [status("203.0.113.2") for _ in range(3)]
    print(f"\naddress 1: {first}; address 2: {second}")
    assert first == second == [200, 200, 429]


def test_wrong_keys_are_rate_limited_per_address(tmp_path: Path, redis_url: str) -> None:
    settings = settings_for(
        tmp_path, redis_url, api_keys=[KEY_A], rate_limit_per_second=0.5, rate_limit_burst=3
    )
    with web(settings, tmp_path) as base:
        url = base + "/v1/jobs?limit=1"
        guesses = [
            requests.get(url, headers={"X-API-Key": f"guess-{i:020d}"}, timeout=10).status_code
            for i in range(6)
        ]
        right = requests.get(url, headers={"X-API-Key": KEY_A}, timeout=10).status_code
    print(f"\nguesses: {guesses}; the right key after them: {right}")
    assert guesses == [401, 401, 401, 429, 429, 429]
    assert right == 200


def test_gcra_script_against_redis(redis_url: str) -> None:
    client = connect(Settings(redis={"url": redis_db(redis_url, databases.RATE_LIMIT)}))
    limiter = RateLimiter(client, per_second=10, burst=4)
    caller = f"test-{time.time_ns()}"
    results = [limiter.check(caller) for _ in range(6)]
    client.close()
    assert results[:4] == [None] * 4
    assert results[4] is not None and 0.05 < results[4] <= 0.1
    assert results[5] is not None and results[5] <= 0.1


@pytest.mark.parametrize("rate", [0, -1])
def test_limiter_needs_a_positive_rate(redis_client: Any, rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(redis_client, per_second=rate, burst=1)
