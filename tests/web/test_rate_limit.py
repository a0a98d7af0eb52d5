"""Per-caller rate limits, enforced in Redis and shared by every gunicorn worker: counted 200s
against 429s through real gunicorn (two workers) and real Redis, the ``RateLimit`` header fields
of each answer, and which client address a keyless caller's bucket is named by
(``web.trusted_proxies``)."""

from __future__ import annotations

import math
import threading
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
from flaskmodel.web.auth import TrustedProxies
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


def settings_for(
    tmp_path: Path, redis_url: str, web: dict[str, Any] | None = None, **security: Any
) -> Settings:
    return Settings(
        models_root=tmp_path,
        data_root=tmp_path,
        run_dir=tmp_path,
        redis={"url": redis_db(redis_url, databases.RATE_LIMIT)},
        web=web or {},
        security=security,
    )


def fields(response: requests.Response) -> tuple[str, str]:
    return response.headers["RateLimit-Policy"], response.headers["RateLimit"]


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
        assert [elsewhere.verdict(elsewhere.ticket("key:a")).wait for _ in range(4)] == [None] * 4
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
    # Rate 5/s, burst 10: 10 requests per 2 s; a refusal has none left for Retry-After seconds.
    retry = refused.headers["Retry-After"]
    assert fields(refused) == ('"default";q=10;w=2', f'"default";r=0;t={retry}')
    assert all(a.headers["RateLimit-Policy"] == '"default";q=10;w=2' for a in answers)
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
        allowed = [requests.get(url, headers=headers, timeout=10) for _ in range(3)]
        refused = requests.get(url, headers=headers, timeout=10)
        assert [a.status_code for a in allowed] == [200, 200, 200]
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2"
        # 3 requests per 6 s; each answer says how many are left now and when one more is.
        policy = '"default";q=3;w=6'
        assert [fields(a) for a in allowed] == [
            (policy, f'"default";r={left};t=2') for left in (2, 1, 0)
        ]
        assert fields(refused) == (policy, '"default";r=0;t=2')
        time.sleep(2.05)
        assert requests.get(url, headers=headers, timeout=10).status_code == 200
        assert requests.get(url, headers=headers, timeout=10).status_code == 429
        # The probes are not limited, so they carry no rate-limit fields.
        health = requests.get(base + "/healthz", timeout=10).headers
        assert "RateLimit" not in health and "RateLimit-Policy" not in health


def test_without_auth_callers_are_limited_per_address(tmp_path: Path, redis_url: str) -> None:
    settings = settings_for(tmp_path, redis_url, rate_limit_per_second=0.5, rate_limit_burst=2)
    with web(settings, tmp_path) as base:
        url = base + "/v1/jobs?limit=1"

        def status(address: str) -> int:
            # From a trusted proxy (loopback, the default) the caller is the address it
            # appended; the client's own entry before it (the same for both) is not believed.
            headers = {"X-Forwarded-For": f"198.51.100.7, {address}"}
            return requests.get(url, headers=headers, timeout=10).status_code

        first = [status("203.0.113.1") for _ in range(3)]
        second = [status("203.0.113.2") for _ in range(3)]
    print(f"\naddress 1: {first}; address 2: {second}")
    assert first == second == [200, 200, 429]


def test_an_untrusted_peer_is_its_own_bucket_whatever_it_forwards(
    tmp_path: Path, redis_url: str
) -> None:
    # Only another host's nginx is trusted: this test's loopback peer is a client itself.
    settings = settings_for(
        tmp_path,
        redis_url,
        web={"trusted_proxies": ["192.0.2.10"]},
        rate_limit_per_second=0.5,
        rate_limit_burst=2,
    )
    with web(settings, tmp_path) as base:
        url = base + "/v1/jobs?limit=1"
        statuses = [
            requests.get(url, headers={"X-Forwarded-For": f"203.0.113.{i}"}, timeout=10)
            for i in range(1, 4)
        ]
    assert [s.status_code for s in statuses] == [200, 200, 429]


def test_wrong_keys_are_rate_limited_per_address(tmp_path: Path, redis_url: str) -> None:
    settings = settings_for(
        tmp_path, redis_url, api_keys=[KEY_A], rate_limit_per_second=0.5, rate_limit_burst=3
    )
    with web(settings, tmp_path) as base:
        url = base + "/v1/jobs?limit=1"
        guesses = [
            requests.get(url, headers={"X-API-Key": f"guess-{i:020d}"}, timeout=10)
            for i in range(6)
        ]
        right = requests.get(url, headers={"X-API-Key": KEY_A}, timeout=10)
    statuses = [g.status_code for g in guesses]
    print(f"\nguesses: {statuses}; the right key after them: {right.status_code}")
    assert statuses == [401, 401, 401, 429, 429, 429]
    assert right.status_code == 200
    # A 401 counts against the address's bucket, and says so.
    left = [g.headers["RateLimit"].split(";")[1] for g in guesses]
    assert left == ["r=2", "r=1", "r=0", "r=0", "r=0", "r=0"]
    assert right.headers["RateLimit"].startswith('"default";r=2;')


def test_gcra_script_against_redis(redis_url: str) -> None:
    client = connect(Settings(redis={"url": redis_db(redis_url, databases.RATE_LIMIT)}))
    limiter = RateLimiter(client, per_second=10, burst=4)
    caller = f"test-{time.time_ns()}"
    results = [limiter.verdict(limiter.ticket(caller)) for _ in range(6)]
    client.close()
    assert [r.wait for r in results[:4]] == [None] * 4
    waits = [r.wait for r in results[4:]]
    assert waits[0] is not None and 0.05 < waits[0] <= 0.1
    assert waits[1] is not None and waits[1] <= 0.1
    # 4 per 0.4 s, shown as per whole second (rounded up); one more within a second each time.
    assert {dict(r.headers)["RateLimit-Policy"] for r in results} == {'"default";q=4;w=1'}
    left = [dict(r.headers)["RateLimit"] for r in results]
    assert left == [f'"default";r={n};t=1' for n in (3, 2, 1, 0, 0, 0)]


def test_concurrent_checks_share_round_trips_and_the_bucket_stays_exact(redis_url: str) -> None:
    # 40 threads check at once: their checks are decided together (one script call per round
    # trip), in order, so exactly the burst is allowed, whoever comes first.
    client = connect(Settings(redis={"url": redis_db(redis_url, databases.RATE_LIMIT)}))
    limiter = RateLimiter(client, per_second=0.01, burst=15)
    caller = f"test-{time.time_ns()}"
    start = threading.Barrier(40)

    def check() -> float | None:
        start.wait(5)
        return limiter.verdict(limiter.ticket(caller)).wait

    with ThreadPoolExecutor(40) as pool:
        waits = list(pool.map(lambda _: check(), range(40)))
    client.close()
    assert waits.count(None) == 15
    assert all(w is not None and w > 0 for w in waits if w is not None)


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("", "203.0.113.9", "203.0.113.9"),  # unix socket: the stack's nginx
        ("", None, "local"),
        ("127.0.0.1", "198.51.100.7, 203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", "203.0.113.9, 127.0.0.2, 10.0.0.5", "203.0.113.9"),  # trusted hops skipped
        ("127.0.0.1", "127.0.0.3, 127.0.0.2", "127.0.0.3"),  # all trusted: the first
        ("198.51.100.1", "203.0.113.9", "198.51.100.1"),  # not a trusted peer
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("::ffff:127.0.0.1", "203.0.113.9:4711", "203.0.113.9"),  # mapped peer, port dropped
        ("::1", "[2001:DB8::0:1]:80", "2001:db8::1"),
        ("127.0.0.1", "unknown", "unknown"),  # not an address: a name of its own
        ("127.0.0.1", " , ", "127.0.0.1"),
        ("127.0.0.1", "6.6.6.6, " + "10.0.0.5, " * 20 + "10.0.0.6", "10.0.0.5"),  # 16 hops read
    ],
)
def test_the_client_behind_trusted_proxies(peer: str, forwarded: str | None, client: str) -> None:
    proxies = TrustedProxies(["127.0.0.0/8", "::1", "unix:", "10.0.0.0/8"])
    assert proxies.client(peer, forwarded) == client
    assert proxies.client(peer, forwarded) == client  # and again, from its memo


def test_no_unix_entry_trusts_no_unix_socket_peer() -> None:
    assert TrustedProxies(["127.0.0.1"]).client("", "203.0.113.9") == "local"
    assert TrustedProxies([]).client("127.0.0.1", "203.0.113.9") == "127.0.0.1"


@pytest.mark.parametrize("rate", [0, -1])
def test_limiter_needs_a_positive_rate(redis_client: Any, rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(redis_client, per_second=rate, burst=1)
