"""What the DICOM front door received, as the web tier reads it: ``flaskmodel:received:<uid>``.

The front door (``flaskmodel.gateway``) keeps the truth on disk beside the files and mirrors each
series' record here (a JSON string, TTL ``series.results_ttl_seconds``) for ``GET
/v1/series/<uid>``; it rewrites the mirror after a Redis restart, so losing it loses nothing.
"""

from __future__ import annotations

import redis

from flaskmodel.errors import SeriesNotFound
from flaskmodel.schemas import ReceivedSeries
from flaskmodel.storage.redis import key


def received_key(series_uid: str) -> str:
    return key("received", series_uid)


class ReceivedSeriesStore:
    """Reads and writes the mirror of received series records."""

    def __init__(self, client: redis.Redis, *, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def save(self, record: ReceivedSeries) -> None:
        self._redis.set(
            received_key(record.series_uid),
            record.model_dump_json(exclude={"job"}, exclude_none=True),
            ex=self._ttl,
        )

    def get(self, series_uid: str) -> ReceivedSeries:
        raw = self._redis.get(received_key(series_uid))
        if raw is None:
            raise SeriesNotFound(f"series '{series_uid}' was not received by the DICOM front door")
        return ReceivedSeries.model_validate_json(raw)
