"""The naive Flask baseline of ``flaskmodel bench``: the server a user writes first.

A plain Flask app run by gunicorn with N *sync* workers (N = cores), no nginx. Each worker loads
every SavedModel under the models root itself (``tf.saved_model.load`` and its
``serving_default`` signature) and answers one request with one signature call: no batching, no
queue, nothing of FlaskModel's runtime. Two routes:

- ``POST /v1/models/<m>:predict``: TF Serving REST JSON ``{"instances": [...]}`` (one input) →
  ``{"predictions": ...}`` (the signature's first output);
- ``POST /raw/<m>``: the body is little-endian float32 examples of the input's shape; the answer
  is the first output's float32 bytes.

``start_baseline`` runs it on a free port with ``python -m gunicorn`` and waits until every worker
has loaded its models; ``Baseline.stop`` ends its process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, abort, request

from flaskmodel.bench.payloads import answers
from flaskmodel.demo.models import import_tensorflow
from flaskmodel.deploy.stack import free_port

#: The models root the app's workers load (every ``<model>/<highest version>/``).
MODELS_ENV = "BENCH_BASELINE_MODELS_ROOT"
#: A folder where each worker writes a file named by its pid once its models are loaded.
READY_ENV = "BENCH_BASELINE_READY_DIR"


@dataclass
class _Model:
    loaded: Any  # kept alive: a signature dies with the object it was loaded from
    signature: Any
    input: str


def _load(root: Path) -> dict[str, _Model]:
    tf = import_tensorflow()
    models = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = [v for v in folder.iterdir() if (v / "saved_model.pb").is_file()]
        versions = [v for v in versions if v.name.isdigit()]
        if not versions:
            continue
        loaded = tf.saved_model.load(str(max(versions, key=lambda v: int(v.name))))
        signature = loaded.signatures["serving_default"]
        name = next(iter(signature.structured_input_signature[1]))
        models[folder.name] = _Model(loaded, signature, name)
    return models


def create_app() -> Flask:
    """The naive app (gunicorn calls this in each worker: ``baseline:create_app()``)."""
    tf = import_tensorflow()
    models = _load(Path(os.environ[MODELS_ENV]))
    app = Flask(__name__)

    def call(name: str, x: np.ndarray) -> np.ndarray:
        model = models.get(name) or abort(404)
        outputs = model.signature(**{model.input: tf.constant(x)})
        return np.asarray(next(iter(outputs.values())))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"models": sorted(models)}

    @app.post("/v1/models/<name>:predict")
    def predict(name: str) -> dict[str, Any]:
        payload = request.get_json()
        x = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": call(name, x).tolist()}

    @app.post("/raw/<name>")
    def raw(name: str) -> Response:
        model = models.get(name) or abort(404)
        spec = model.signature.structured_input_signature[1][model.input]
        x = np.frombuffer(request.get_data(), "<f4").reshape(-1, *spec.shape[1:])
        out = call(name, x).astype("<f4")
        return Response(out.tobytes(), mimetype="application/octet-stream")

    ready = os.environ.get(READY_ENV)
    if ready:
        (Path(ready) / str(os.getpid())).touch()
    return app


@dataclass
class Baseline:
    """A running baseline: its gunicorn master process and base URL."""

    process: subprocess.Popen[bytes]
    base: str
    workers: int

    def stop(self) -> None:
        """SIGTERM the process group (gunicorn and its workers); SIGKILL after 30 s."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        except ProcessLookupError:
            pass


def start_baseline(
    models_root: Path, work: Path, *, workers: int | None = None, timeout: float = 240
) -> Baseline:
    """Start the baseline on a free port (logs in ``work/baseline.log``); returns once every
    worker has loaded the models and the app answers."""
    workers = workers or os.cpu_count() or 1
    ready = work / "baseline-ready"
    ready.mkdir(parents=True, exist_ok=True)
    for stale in ready.iterdir():
        stale.unlink()
    port = free_port()
    env = {
        **os.environ,
        MODELS_ENV: str(models_root),
        READY_ENV: str(ready),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    with (work / "baseline.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", f"--workers={workers}", "--worker-class=sync",
                f"--bind=127.0.0.1:{port}", "--timeout=120", "--log-level=warning",
                "flaskmodel.bench.baseline:create_app()",
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    baseline = Baseline(process, f"http://127.0.0.1:{port}", workers)
    try:
        _wait(baseline, ready, timeout, work / "baseline.log")
    except BaseException:
        baseline.stop()
        raise
    return baseline


def _wait(baseline: Baseline, ready: Path, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if baseline.process.poll() is not None:
            raise RuntimeError(
                f"the baseline's gunicorn exited with {baseline.process.returncode}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        if len(list(ready.iterdir())) >= baseline.workers and answers(baseline.base + "/healthz"):
            return
        time.sleep(0.25)
    raise RuntimeError(f"the baseline was not ready within {timeout:.0f} s (see {log})")
