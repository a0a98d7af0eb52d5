"""Per-series results for other systems: ``flaskmodel:series:<uid>:<model>``, the original
design's per-slice keys, owned here (written by series jobs, read by ``GET
/v1/series/<uid>/results``).

One hash per series and model (TTL ``series.results_ttl_seconds``): a field per slice,
``slice:<SOPInstanceUID>`` (plus ``:<frame>`` for a frame of a multi-frame image) holding the
slice's label, scores and position as JSON, and ``meta`` (the job, model, version,
post-processor, class names). Every finished job over the series merges its slices in, so a
re-run replaces the labels of the slices it scored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis

from flaskmodel.storage.redis import key

#: The per-slice result fields kept in the hash.
SLICE_FIELDS = (
    "index",
    "sop_instance_uid",
    "frame_number",
    "instance_number",
    "z",
    "label",
    "label_index",
    "label_raw",
    "scores",
)


def series_results_key(series_uid: str, model: str) -> str:
    return key("series", series_uid, model)


def _field(row: dict[str, Any]) -> str:
    frame = row.get("frame_number")
    return f"slice:{row['sop_instance_uid']}" + ("" if frame is None else f":{frame}")


class SeriesResults:
    """Merges finished series jobs' labels per series and model, and reads them back."""

    def __init__(self, client: redis.Redis, *, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def merge(self, model: str, job_id: str, result: dict[str, Any]) -> None:
        """Merge a finished job's per-slice labels (``result`` as the job returns it)."""
        fields: dict[Any, Any] = {
            _field(row): json.dumps({k: row.get(k) for k in SLICE_FIELDS})
            for row in result["slices"]
        }
        fields["meta"] = json.dumps(
            {
                "job_id": job_id,
                "model_name": result["model_name"],
                "model_version": result["model_version"],
                "direction": result["direction"],
                "postprocess": result["postprocess"],
                "class_names": result["class_names"],
                "series_slices": result["series"]["slices"],
                "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
        )
        target = series_results_key(result["series_uid"], model)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(target, mapping=fields)
        pipe.expire(target, self._ttl)
        pipe.execute()

    def read(self, series_uid: str, model: str) -> dict[str, Any] | None:
        """The merged labels (``meta`` and ``slices`` in series order), None when there are none."""
        found = self._redis.hgetall(series_results_key(series_uid, model))
        raw = {str(k): str(v) for k, v in found.items()}
        if not raw:
            return None
        meta = json.loads(raw.pop("meta", "{}"))
        slices = [json.loads(value) for name, value in raw.items() if name.startswith("slice:")]
        slices.sort(key=lambda row: row["index"])
        return {**meta, "slices": slices}
