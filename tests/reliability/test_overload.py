"""Overload: more submits than the workers can take. Admission control bounds each model's
unfinished jobs; past the bound a submit gets 429 with a Retry-After priced from the queue depth
and the measured throughput. Counts the answers (only 2xx/429/503, all JSON) and that every
accepted job completes.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from flaskmodel.settings import Settings
from tests.conftest import redis_db
from tests.reliability.harness import Harness, fake_models, ledger, open_harness

pytestmark = pytest.mark.reliability

BOUND = 20
CLIENTS = 12
PER_CLIENT = 25


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Harness]:
    root = fake_models(tmp_path_factory.mktemp("busy-models"), {"busy": {"delay_ms": 40}})
    logs = tmp_path_factory.mktemp("busy-logs")
    settings = Settings(
        models_root=root,
        data_root=logs,
        run_dir=logs,
        redis={"url": redis_db(redis_url, 6)},
        worker={"heartbeat_seconds": 0.5, "concurrency": 1},
        runtime={"backend": "fake"},
        jobs={"max_pending": BOUND},
    )
    with open_harness(settings, logs) as harness:
        yield harness


def test_overload_answers_429_with_retry_after_and_loses_nothing(busy: Harness) -> None:
    answers: Counter[int] = Counter()
    not_json: list[int] = []
    retry_afters: list[int] = []
    accepted: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        session = requests.Session()
        for i in range(PER_CLIENT):
            response = session.post(
                busy.url("/v1/jobs"),
                json={"model": "busy", "inputs": [[float(c), float(i), 0.0, 0.0]]},
                timeout=10,
            )
            with lock:
                answers[response.status_code] += 1
                try:
                    body = response.json()
                except ValueError:
                    not_json.append(response.status_code)
                    continue
                if response.status_code == 202:
                    accepted.append(body["job_id"])
                elif response.status_code in (429, 503):
                    retry_afters.append(int(response.headers["Retry-After"]))
            time.sleep(0.02)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    offered = time.monotonic() - started
    counted = ledger(busy.wait_terminal(accepted, timeout=60))
    spread = Counter(retry_afters)
    print(
        f"\noverload: {CLIENTS * PER_CLIENT} submits in {offered:.1f}s against a bound of {BOUND} "
        f"(capacity ~25 jobs/s): answers {dict(answers)}, non-JSON {len(not_json)}, "
        f"Retry-After values {dict(sorted(spread.items()))}; accepted {len(accepted)}, "
        f"ledger {counted}"
    )
    assert set(answers) <= {202, 429, 503}, answers
    assert not not_json
    assert answers[429] > 0, "the offered load never reached the bound"
    assert counted["lost"] == 0
    assert counted["states"] == {"SUCCEEDED": len(accepted)}
    assert busy.redis.zcard("flaskmodel:pending:busy") == 0, "finished jobs still counted"
