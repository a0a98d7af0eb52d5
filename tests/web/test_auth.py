"""API-key authentication through real gunicorn, a real worker and real Redis: 401s, open
health endpoints, and jobs visible only to the key that created them (404 to any other)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from flaskmodel.settings import SecuritySettings, Settings
from flaskmodel.storage.redis import key
from flaskmodel.web.apikeys import KeyRing, parse_lines
from tests import databases
from tests.conftest import FAKE_SPEC, Stack, redis_db, running_stack, write_fake_model

ALICE = "alice-" + "a1" * 16
UNNAMED = "unnamed-" + "b2" * 16
BOB = "bob-" + "c3" * 16


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("auth-models")
    write_fake_model(root, "fake", 1, FAKE_SPEC)
    logs = tmp_path_factory.mktemp("auth-logs")
    keys_file = logs / "api-keys"
    keys_file.write_text(f"# the file's keys\n\nbob {BOB}\n")
    settings = Settings(
        models_root=root,
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.AUTH)},
        worker={"heartbeat_seconds": 1.0, "concurrency": 1},
        runtime={"backend": "fake"},
        security={"api_keys": [f"alice {ALICE}", UNNAMED], "api_keys_file": str(keys_file)},
    )
    with running_stack(settings, logs) as stack:
        yield stack


def as_key(secret: str, header: str = "bearer") -> dict[str, str]:
    if header == "bearer":
        return {"Authorization": f"Bearer {secret}"}
    return {"X-API-Key": secret}


def test_missing_or_wrong_key_is_401_and_health_stays_open(auth_stack: Stack) -> None:
    for headers in ({}, as_key("wrong-" + "x" * 20), {"Authorization": f"Basic {ALICE}"}):
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/nowhere")):
            response = requests.request(method, auth_stack.url(path), headers=headers, timeout=10)
            assert response.status_code == 401, (headers, path, response.text)
            assert response.json()["type"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/openapi.json"):
        assert requests.get(auth_stack.url(path), timeout=10).status_code == 200, path
    assert requests.get(auth_stack.url("/docs"), timeout=10).status_code == 200
    for secret, header in ((ALICE, "bearer"), (UNNAMED, "x-api-key"), (BOB, "x-api-key")):
        headers = as_key(secret, header)
        response = requests.get(auth_stack.url("/v1/jobs"), headers=headers, timeout=10)
        assert response.status_code == 200, response.text


def test_a_job_is_visible_only_to_the_key_that_created_it(auth_stack: Stack) -> None:
    alice, bob = as_key(ALICE), as_key(BOB, "x-api-key")
    created = requests.post(
        auth_stack.url("/v1/jobs"),
        json={"model": "fake", "inputs": [[1, 2, 3, 4]]},
        headers=alice,
        timeout=10,
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]
    deadline = time.monotonic() + 30
    while (
        requests.get(auth_stack.url(f"/v1/jobs/{job_id}"), headers=alice, timeout=5).json()["state"]
        not in ("SUCCEEDED", "FAILED")
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    mine = requests.get(auth_stack.url(f"/v1/jobs/{job_id}"), headers=alice, timeout=10)
    assert mine.status_code == 200 and mine.json()["state"] == "SUCCEEDED"

    theirs = {
        "get": requests.get(auth_stack.url(f"/v1/jobs/{job_id}"), headers=bob, timeout=10),
        "wait": requests.get(auth_stack.url(f"/v1/jobs/{job_id}?wait=1"), headers=bob, timeout=10),
        "cancel": requests.delete(auth_stack.url(f"/v1/jobs/{job_id}"), headers=bob, timeout=10),
        "result": requests.get(auth_stack.url(f"/get_result/{job_id}"), headers=bob, timeout=10),
        "thumb": requests.get(
            auth_stack.url(f"/v1/jobs/{job_id}/slices/0/thumbnail.png"), headers=bob, timeout=10
        ),
    }
    unknown = requests.get(auth_stack.url(f"/v1/jobs/{uuid.uuid4().hex}"), headers=bob, timeout=10)
    counted = ", ".join(f"{name}: {r.status_code}" for name, r in theirs.items())
    print(f"\nanother key's job: {counted}")
    for name, response in theirs.items():
        assert response.status_code == 404, (name, response.text)
        # Word for word what an unknown id gets: nothing tells the job exists.
        assert response.json()["type"] in ("job_not_found", "not_found"), name
    assert theirs["get"].json()["error"].replace(job_id, "X") == unknown.json()["error"].replace(
        unknown.url.rsplit("/", 1)[1], "X"
    )
    listed = requests.get(auth_stack.url("/v1/jobs?limit=500"), headers=bob, timeout=10).json()
    assert job_id not in {j["job_id"] for j in listed["jobs"]}
    listed = requests.get(auth_stack.url("/v1/jobs?limit=500"), headers=alice, timeout=10).json()
    assert job_id in {j["job_id"] for j in listed["jobs"]}

    # The record names the key's id, never the key.
    client = redis.Redis.from_url(auth_stack.settings.redis_url(), decode_responses=True)
    record = client.hgetall(key("job", job_id))
    client.close()
    assert record["owner"] == "alice"
    assert not any(ALICE in value for value in record.values())


def test_cancel_by_another_key_is_404_and_by_the_owner_works(auth_stack: Stack) -> None:
    unnamed, bob = as_key(UNNAMED, "x-api-key"), as_key(BOB)
    # A second worker would be needed to keep a job queued; a fresh job is cancelled at once
    # by its owner, so cancel first as Bob (404) and then as the owner (200 or 409 if done).
    job_id = requests.post(
        auth_stack.url("/v1/jobs"),
        json={"model": "fake", "inputs": [[1, 2, 3, 4]]},
        headers=unnamed,
        timeout=10,
    ).json()["job_id"]
    theirs = requests.delete(auth_stack.url(f"/v1/jobs/{job_id}"), headers=bob, timeout=10)
    assert theirs.status_code == 404
    own = requests.delete(auth_stack.url(f"/v1/jobs/{job_id}"), headers=unnamed, timeout=10)
    assert own.status_code in (200, 409), own.text
    view = wait_job_as(auth_stack, job_id, unnamed)
    assert view["state"] in ("CANCELLED", "SUCCEEDED")


def wait_job_as(stack: Stack, job_id: str, headers: dict[str, str]) -> dict[str, object]:
    response = requests.get(stack.url(f"/v1/jobs/{job_id}?wait=10"), headers=headers, timeout=15)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_idempotency_keys_are_scoped_per_api_key(auth_stack: Stack) -> None:
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    payload = {"model": "fake", "inputs": [[1, 2, 3, 4]]}
    url = auth_stack.url("/v1/jobs")
    first = requests.post(url, json=payload, headers={**as_key(ALICE), **idem}, timeout=10)
    again = requests.post(url, json=payload, headers={**as_key(ALICE), **idem}, timeout=10)
    other = requests.post(url, json=payload, headers={**as_key(BOB), **idem}, timeout=10)
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 202)
    assert first.json()["job_id"] == again.json()["job_id"] != other.json()["job_id"]


def test_keys_file_is_reread_when_it_changes(auth_stack: Stack, tmp_path: Path) -> None:
    keys_file = auth_stack.settings.security.api_keys_file
    assert keys_file is not None
    newcomer = "carol-" + uuid.uuid4().hex
    url = auth_stack.url("/v1/jobs")
    assert requests.get(url, headers=as_key(newcomer), timeout=10).status_code == 401
    original = keys_file.read_text()
    keys_file.write_text(original + f"carol {newcomer}\n")
    try:
        deadline = time.monotonic() + 10
        status = 401
        while status == 401 and time.monotonic() < deadline:
            time.sleep(0.3)
            status = requests.get(url, headers=as_key(newcomer), timeout=10).status_code
        assert status == 200
    finally:
        keys_file.write_text(original)
    deadline = time.monotonic() + 10
    while status != 401 and time.monotonic() < deadline:
        time.sleep(0.3)
        status = requests.get(url, headers=as_key(newcomer), timeout=10).status_code
    assert status == 401, "a key removed from the file still works"


def test_key_ring_parsing() -> None:
    keys = parse_lines(f"# comment\n\nalice {ALICE}\n{UNNAMED}\n", "keys")
    assert keys[0].key_id == "alice"
    assert keys[1].key_id.startswith("key-") and UNNAMED not in keys[1].key_id
    with pytest.raises(ValueError, match="line 1"):
        parse_lines("short\n", "keys")
    with pytest.raises(ValueError, match="line 1"):
        parse_lines(f"a b {ALICE}\n", "keys")
    with pytest.raises(ValueError, match="used twice"):
        KeyRing(SecuritySettings(api_keys=[f"x {ALICE}", f"x {BOB}"]))
    ring = KeyRing(SecuritySettings(api_keys=[f"alice {ALICE}", f"bob {BOB}"]))
    assert ring.enabled
    assert (ring.identify(ALICE), ring.identify(BOB), ring.identify(ALICE + "x")) == (
        "alice",
        "bob",
        None,
    )
    assert ring.identify(None) is None and ring.identify("") is None
    assert not KeyRing(SecuritySettings()).enabled


def test_keys_are_secrets_in_settings() -> None:
    settings = Settings(security={"api_keys": [f"alice {ALICE}"]})
    assert ALICE not in repr(settings) and ALICE not in str(settings.masked())
    env = settings.env()
    assert ALICE in env["FLASKMODEL_SECURITY__API_KEYS"]
    assert Settings(security={"api_keys": [ALICE]}).security.api_keys[0].get_secret_value() == ALICE
