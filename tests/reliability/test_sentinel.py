"""Redis behind Sentinel: a primary with a replica, one Sentinel, and `kill -9` of the primary.

Every client — the web tier's job store, the worker's store, heartbeats and synchronous consumer,
the Celery broker and result backend — finds the primary through the Sentinel
(``sentinel://…`` URL plus ``redis.sentinel_master``), and after the failover finds the promoted
replica: jobs finished before the failure stay readable, and jobs submitted after it complete.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from flaskmodel.settings import Settings
from flaskmodel.storage.redis import key
from flaskmodel.web import create_app
from tests import procs
from tests.conftest import FAKE_SPEC, write_fake_model

pytestmark = pytest.mark.reliability

SECRET = "s3ntinel-test"
MASTER = "fm"


def redis_server(workdir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "yes", "--dir", str(workdir), "--logfile", str(workdir / "log")]
    args += ["--requirepass", SECRET, "--masterauth", SECRET, *extra]
    proc = subprocess.Popen(args, start_new_session=True)
    client = redis.Redis(port=port, password=SECRET)
    procs.wait_for(lambda: bool(client.ping()), 10, f"redis on {port}", proc)
    return proc


@pytest.fixture
def sentinel_cluster(
    tmp_path: Path,
) -> Iterator[tuple[int, int, int, list[subprocess.Popen[bytes]]]]:
    primary_port, replica_port, sentinel_port = (procs.free_port() for _ in range(3))
    started = [redis_server(tmp_path / "primary", primary_port)]
    try:
        started.append(
            redis_server(tmp_path / "replica", replica_port, "--replicaof", "127.0.0.1",
                         str(primary_port))
        )  # fmt: skip
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"logfile {tmp_path / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 1\n"
            f"sentinel auth-pass {MASTER} {SECRET}\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
        )
        started.append(
            subprocess.Popen(["redis-server", str(conf), "--sentinel"], start_new_session=True)
        )
        sentinel = redis.Redis(port=sentinel_port, decode_responses=True)
        procs.wait_for(
            lambda: sentinel.execute_command("SENTINEL", "REPLICAS", MASTER) != [],
            20,
            "sentinel sees the replica",
        )
        yield primary_port, replica_port, sentinel_port, started
    finally:
        for proc in started:
            procs.stop(proc)


def test_clients_follow_a_sentinel_failover(
    sentinel_cluster: tuple[int, int, int, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    primary_port, replica_port, sentinel_port, started = sentinel_cluster
    models = tmp_path / "models"
    write_fake_model(models, "paced", 1, {**FAKE_SPEC, "delay_ms": 20})
    (models / "paced" / "flaskmodel.json").write_text(json.dumps({"max_batch_delay_ms": 0}))
    settings = Settings(
        models_root=models,
        data_root=tmp_path / "data",
        run_dir=tmp_path / "run",
        redis={
            "url": f"sentinel://127.0.0.1:{sentinel_port}/0",
            "sentinel_master": MASTER,
            "password": SECRET,
            "socket_timeout": 2.0,
        },
        runtime={"backend": "fake"},
        worker={"heartbeat_seconds": 1.0},
        jobs={"soft_time_limit": 3, "time_limit": 4, "visibility_timeout": 6},
    )
    web = create_app(settings).test_client()
    replica = redis.Redis(port=replica_port, password=SECRET, decode_responses=True)

    def submit(value: float, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:  # during the failover submits get 503; a client retries
            response = web.post("/v1/jobs", json={"model": "paced", "inputs": [[value] * 4]})
            if response.status_code == 202:
                return str(response.get_json()["job_id"])
            assert response.status_code == 503, response.get_json()
            assert time.monotonic() < deadline, response.get_json()
            time.sleep(0.5)

    def all_done(client: redis.Redis, ids: list[str]) -> bool:
        return all(client.hget(key("job", i), "state") == "SUCCEEDED" for i in ids)

    worker = procs.start_worker(settings, tmp_path / "worker.log")
    try:
        before = [submit(float(i)) for i in range(10)]
        procs.wait_for(lambda: all_done(replica, before), 30, "jobs before the failover")

        os.killpg(started[0].pid, signal.SIGKILL)  # the primary
        started[0].wait(10)
        sentinel = redis.Redis(port=sentinel_port, decode_responses=True)
        procs.wait_for(
            lambda: (
                sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1]
                == str(replica_port)
            ),
            30,
            "the replica promoted",
        )
        after = [submit(float(i)) for i in range(10)]
        procs.wait_for(lambda: all_done(replica, after), 60, "jobs after the failover")
        assert all_done(replica, before)  # replicated before the primary died
        assert web.get("/readyz").status_code == 200
        assert replica.execute_command("ROLE")[0] == "master"
    finally:
        procs.stop(worker)
    assert primary_port != replica_port


def test_sentinel_master_and_url_go_together() -> None:
    with pytest.raises(ValueError, match="go together"):
        Settings(redis={"url": "redis://127.0.0.1:6379/0", "sentinel_master": MASTER})
    with pytest.raises(ValueError, match="go together"):
        Settings(redis={"url": "sentinel://127.0.0.1:26379/0"})
    from flaskmodel.storage.redis import sentinel_addresses  # noqa: PLC0415

    hosts = "sentinel://10.0.0.5:26379;sentinel://10.0.0.6:26380/2"
    assert sentinel_addresses(hosts) == ([("10.0.0.5", 26379), ("10.0.0.6", 26380)], 2)
