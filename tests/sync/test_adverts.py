"""``SyncPredictor``'s advert cache: one caller refreshes an expired entry, the rest use it."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import redis

from flaskmodel.jobs.submit import JobSubmitter
from flaskmodel.schemas import ModelAdvert
from flaskmodel.settings import BatchingSettings
from flaskmodel.sync.predictor import SyncPredictor


class SlowSubmitter:
    """Answers ``model`` after a pause, counting the calls (as reading every heartbeat would)."""

    def __init__(self) -> None:
        self.calls = 0

    def model(self, name: str) -> ModelAdvert:
        self.calls += 1
        time.sleep(0.2)
        return ModelAdvert(name=name, versions=[1], latest=1, specs={})


def test_an_expired_advert_is_refreshed_once_while_the_others_use_it() -> None:
    submitter = SlowSubmitter()
    predictor = SyncPredictor(
        cast(redis.Redis, None), cast(JobSubmitter, submitter), BatchingSettings()
    )
    first = predictor.advert("tiny")
    assert submitter.calls == 1
    adverts: dict[str, Any] = predictor._adverts
    adverts["tiny"] = (time.monotonic() - 1, first)  # expired
    got: list[ModelAdvert] = []
    threads = [
        threading.Thread(target=lambda: got.append(predictor.advert("tiny"))) for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(got) == 20 and all(a.name == "tiny" for a in got)
    assert submitter.calls <= 3  # one refresh (threads may race the first), not twenty
