"""An OpenAPI-driven fuzz run: schemathesis generates requests for every operation in
``/openapi.json`` (valid and invalid ones) against real gunicorn, a real Celery worker and Redis
(fake models), and checks that none is answered with a server error (5xx).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from flaskmodel.settings import Settings
from tests import databases, procs
from tests.conftest import redis_db
from tests.reliability.harness import Harness, fake_models, open_harness

pytestmark = pytest.mark.reliability

# Real names where the schema cannot know them, so the requests reach the models and the jobs
# instead of stopping at 404 (the path and bodies around them are still generated).
CONFIG = """
[parameters]
"path.name" = "fuzz"
"path.version" = "1"
"body.model" = "fuzz"

[[operations]]
include-path = "/v1/models/{path}"
include-method = "POST"
parameters = { "path.path" = "fuzz:predict" }

[[operations]]
include-path = "/v1/models/{path}"
include-method = "GET"
parameters = { "path.path" = "fuzz/metadata" }
"""
# Per operation and phase: the whole run stays well under a minute here. A fixed seed makes a
# failure reproduce; FLASKMODEL_FUZZ_EXAMPLES / FLASKMODEL_FUZZ_SEED explore further.
MAX_EXAMPLES = int(os.environ.get("FLASKMODEL_FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("FLASKMODEL_FUZZ_SEED", "20261125"))


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Harness]:
    root = fake_models(tmp_path_factory.mktemp("fuzz-models"), {"fuzz": {}})
    logs = tmp_path_factory.mktemp("fuzz-logs")
    settings = Settings(
        models_root=root,
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, databases.OPENAPI_FUZZ)},
        worker={"heartbeat_seconds": 0.5, "concurrency": 1},
        runtime={"backend": "fake"},
        series={"default_model": "fuzz"},
    )
    with open_harness(settings, logs) as harness:
        yield harness


def test_schemathesis_finds_no_server_error(
    fuzz: Harness, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reports = tmp_path_factory.mktemp("fuzz-report")
    config = reports / "schemathesis.toml"
    config.write_text(CONFIG)
    paths = requests.get(fuzz.url("/openapi.json"), timeout=5).json()["paths"]
    operations = sum(len(item) for item in paths.values())
    args = [
        str(procs.VENV_BIN / "schemathesis"),
        f"--config-file={config}",
        "run",
        fuzz.url("/openapi.json"),
        "--checks=not_a_server_error",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        "--workers=1",
        "--phases=examples,coverage,fuzzing",
        "--generation-database=none",
        "--request-timeout=10",
        "--suppress-health-check=all",
        "--no-color",
        "--report=har",
        f"--report-dir={reports}",
    ]
    started = time.monotonic()
    done = subprocess.run(  # in the report folder: it keeps replay files in its cwd
        args, cwd=reports, capture_output=True, text=True, timeout=300, check=False
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    statuses: Counter[int] = Counter()
    for har in reports.glob("har-*"):
        for entry in json.loads(har.read_text())["log"]["entries"]:
            statuses[entry["response"]["status"]] += 1
    print(
        f"\nschemathesis over {operations} operations, {MAX_EXAMPLES} examples each per phase, "
        f"seed {SEED}: exit {done.returncode} in {took:.0f}s; answers "
        f"{dict(sorted(statuses.items()))}"
    )
    assert done.returncode == 0, output[-6000:]
    assert fuzz.web is not None and fuzz.web.poll() is None
    assert fuzz.worker is not None and fuzz.worker.poll() is None
    assert statuses and not [s for s in statuses if s >= 500], statuses
