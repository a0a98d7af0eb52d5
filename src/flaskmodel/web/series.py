"""``/v1/series/<uid>/results``: the per-slice labels stored for a series by its jobs."""

from __future__ import annotations

import json
import logging
import re

from flaskmodel.errors import InvalidRequest, InvalidSeriesId, NotFound
from flaskmodel.schemas import MODEL_NAME_PATTERN, SERIES_UID_PATTERN
from flaskmodel.storage.redis import key
from flaskmodel.web.call import Call, Reply
from flaskmodel.web.services import Services

logger = logging.getLogger(__name__)


def series_results(svc: Services, call: Call) -> Reply:
    series_uid: str = call.params["series_uid"]
    if not re.match(SERIES_UID_PATTERN, series_uid):
        raise InvalidSeriesId(f"invalid series id {series_uid[:64]!r}")
    model = call.query.get("model", svc.settings.series.default_model)
    if not re.match(MODEL_NAME_PATTERN, model):
        raise InvalidRequest(f"invalid model name {model[:64]!r}")
    raw: dict[str, str] = svc.redis.hgetall(key("series", series_uid, model))  # type: ignore[assignment]
    if not raw:
        raise NotFound(f"no results for series '{series_uid}' and model '{model}'")
    meta = json.loads(raw.pop("meta", "{}"))
    slices = [
        {"sop_instance_uid": field.removeprefix("slice:"), **json.loads(value)}
        for field, value in raw.items()
        if field.startswith("slice:")
    ]
    slices.sort(key=lambda row: row["index"])
    return 200, {"series_uid": series_uid, "model": model, **meta, "slices": slices}, {}
