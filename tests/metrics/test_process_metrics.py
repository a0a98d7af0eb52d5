"""``/metrics`` carries the standard ``process_*`` series of the process answering the scrape."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from flaskmodel.settings import Settings
from flaskmodel.web import create_app
from tests import databases
from tests.conftest import redis_db


@pytest.fixture
def client(redis_url: str) -> Iterator[FlaskClient]:
    app = create_app(Settings(redis={"url": redis_db(redis_url, databases.RECORDER)}))
    yield app.test_client()


def scrape(client: FlaskClient) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("process_")
    }


def _own_start_time() -> float:
    """This process's start, from /proc (what ProcessCollector reads, computed independently)."""
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rpartition(")")[2].split()[19])
    with open("/proc/stat") as boot:
        btime = next(int(line.split()[1]) for line in boot if line.startswith("btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def test_process_series_describe_the_answering_process(client: FlaskClient) -> None:
    seen = scrape(client)
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    } <= set(seen)
    assert seen["process_start_time_seconds"] == pytest.approx(_own_start_time(), abs=1.0)
    assert 0 < seen["process_cpu_seconds_total"] <= time.process_time() + 1.0
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert seen["process_resident_memory_bytes"] == pytest.approx(rss, rel=0.2)
    assert abs(seen["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 5


def test_open_fds_follow_the_process_at_scrape_time(client: FlaskClient) -> None:
    before = scrape(client)["process_open_fds"]
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(64)]
    try:
        during = scrape(client)["process_open_fds"]
    finally:
        for fd in held:
            os.close(fd)
    assert during - before == pytest.approx(64, abs=4)
