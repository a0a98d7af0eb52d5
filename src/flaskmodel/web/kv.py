"""``/v1/kv/<key>``: the original design's Redis read/write API, namespaced and validated.

``PUT`` takes ``{"value": <any JSON>, "ttl"?: seconds}``; ``GET`` answers
``{"key", "value", "ttl"}``; ``DELETE`` answers 204.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flaskmodel.storage.kv import MAX_TTL_SECONDS
from flaskmodel.web.body import parse, parse_json
from flaskmodel.web.call import Call, Reply
from flaskmodel.web.services import Services


class PutValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Any = Field(...)
    ttl: int | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)


def get_value(svc: Services, call: Call) -> Reply:
    name: str = call.params["name"]
    value, ttl = svc.kv.get(name)
    return 200, {"key": name, "value": value, "ttl": ttl}, {}


def put_value(svc: Services, call: Call) -> Reply:
    name: str = call.params["name"]
    body = parse(PutValue, parse_json(call.body()))
    created = svc.kv.put(name, body.value, body.ttl)
    value, ttl = svc.kv.get(name)
    return 201 if created else 200, {"key": name, "value": value, "ttl": ttl}, {}


def delete_value(svc: Services, call: Call) -> Reply:
    svc.kv.delete(call.params["name"])
    return 204, None, {}
