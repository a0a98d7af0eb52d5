"""The web tier's CPU per request, in process: the app's WSGI callable called with a prepared
environ, the worker tier answered in this process, so what is timed is the web tier alone
(routing, authentication, rate limits, parsing, validation, the answer, metrics).

    .venv/bin/python benchmarks/web_tier.py [--requests N] [--rounds R]

Scenarios: TF Serving REST ``POST /v1/models/tiny:predict`` (one row of 32 floats) and V2
``POST /v2/models/tiny/infer`` (JSON, the same row), each with API keys off, on, and on with a
per-key rate limit (never reached, so every request pays for the check: one Redis round trip to
a ``redis-server`` this script starts). Numbers are CPU microseconds per request of this process
(``time.process_time``, all its threads), the median of the rounds. Compare them only within one
run on one machine; run it against an older tree with ``PYTHONPATH=<old>/src``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis
from werkzeug.test import EnvironBuilder

from flaskmodel.metrics.recorder import RECORDER
from flaskmodel.schemas import ModelAdvert, ModelSpec, TensorSpec
from flaskmodel.settings import Settings
from flaskmodel.web import create_app

KEY = "bench-" + "k" * 20
SPEC = ModelSpec(
    name="tiny",
    version=1,
    inputs=[TensorSpec(name="x", dtype="float32", shape=[None, 32])],
    outputs=[TensorSpec(name="output_0", dtype="float32", shape=[None, 10])],
)
ROW = [round(i / 31, 4) for i in range(32)]
SCENARIOS = {
    "predict": ("/v1/models/tiny:predict", {"instances": [ROW]}),
    "infer": (
        "/v2/models/tiny/infer",
        {"inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP32", "data": ROW}]},
    ),
}


class InProcessWorkers:
    """Stands in for ``SyncPredictor``: the tiny model advertised, its answer made here."""

    def __init__(self) -> None:
        self._advert = ModelAdvert(name="tiny", versions=[1], latest=1, specs={1: SPEC})

    def advert(self, name: str) -> ModelAdvert:
        return self._advert

    def model(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> tuple[ModelAdvert, ModelSpec]:
        return self._advert, SPEC

    def predict(
        self, spec: ModelSpec, inputs: dict[str, np.ndarray], **_: Any
    ) -> dict[str, np.ndarray]:
        rows = next(iter(inputs.values())).shape[0]
        return {"output_0": np.full((rows, 10), 0.1, dtype=np.float32)}

    def close(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="bench-web-redis-"))
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen(
        [*args, "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def make_app(redis_url: str, folder: Path, mode: str) -> Callable[..., Any]:
    security: dict[str, Any] = {}
    if mode != "keys off":
        security["api_keys"] = [f"bench {KEY}"]
    if mode == "keys on + rate limit":
        security.update(rate_limit_per_second=1e9, rate_limit_burst=1_000_000_000)
    settings = Settings(
        models_root=folder,
        data_root=folder,
        run_dir=folder,
        redis={"url": redis_url},
        log={"level": "WARNING"},
        security=security,
    )
    app = create_app(settings)
    app.extensions["flaskmodel"].sync = InProcessWorkers()
    return app


def prepared(path: str, body: dict[str, Any], keyed: bool) -> tuple[dict[str, Any], bytes]:
    data = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}"} if keyed else {}
    environ = EnvironBuilder(
        path=path,
        method="POST",
        data=data,
        content_type="application/json",
        headers=headers,
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    ).get_environ()
    return environ, data


def cpu_per_request(app: Callable[..., Any], environ: dict[str, Any], data: bytes, n: int) -> float:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    started = time.process_time()
    for _ in range(n):
        env = environ.copy()
        env["wsgi.input"] = io.BytesIO(data)
        for _chunk in app(env, start_response):
            pass
    spent = time.process_time() - started
    bad = {s for s in statuses if not s.startswith("200")}
    if bad:
        raise RuntimeError(f"not every answer was 200: {bad}")
    return spent / n * 1e6


def cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line]
    return names[0] if names else platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    modes = ("keys off", "keys on", "keys on + rate limit")
    from flaskmodel import web  # noqa: PLC0415 - to say which tree is measured

    tree = Path(web.__file__).parents[2]
    commit = subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"tree: {tree} (commit {commit or 'unknown'}); {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
    print(f"python {platform.python_version()}, {cpu_model()}, {os.cpu_count()} cores")
    print(f"{options.requests} requests x {options.rounds} rounds; CPU µs per request (median)")
    rounds: dict[tuple[str, str], list[float]] = {}
    with redis_server() as url, tempfile.TemporaryDirectory() as folder:
        apps = {mode: make_app(url, Path(folder), mode) for mode in modes}
        runs = [
            (scenario, mode, app, *prepared(path, body, mode != "keys off"))
            for scenario, (path, body) in SCENARIOS.items()
            for mode, app in apps.items()
        ]
        for _, _, app, environ, data in runs:
            cpu_per_request(app, environ, data, 500)  # warm: caches, flusher, scripts
        # Round by round through every case, so a disturbance spreads over all of them.
        for _ in range(options.rounds):
            for scenario, mode, app, environ, data in runs:
                spent = cpu_per_request(app, environ, data, options.requests)
                rounds.setdefault((scenario, mode), []).append(spent)
        RECORDER.stop()  # its last flush, while Redis still runs
        for app in apps.values():
            app.extensions["flaskmodel"].redis.close()
    results = {case: statistics.median(values) for case, values in rounds.items()}
    print(f"{'scenario':10} {'mode':22} {'µs/request':>10} {'vs keys off':>12}")
    for (scenario, mode), micros in results.items():
        ratio = micros / results[scenario, "keys off"]
        print(f"{scenario:10} {mode:22} {micros:10.1f} {ratio:11.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
