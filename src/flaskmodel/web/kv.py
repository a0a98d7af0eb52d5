"""``/v1/kv/<key>``: the original design's Redis read/write API, namespaced and validated.

``PUT`` takes ``{"value": <any JSON>, "ttl"?: seconds}``; ``GET`` answers
``{"key", "value", "ttl"}``; ``DELETE`` answers 204.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from flaskmodel.storage.kv import MAX_TTL_SECONDS
from flaskmodel.web.body import json_body, parse
from flaskmodel.web.services import services

logger = logging.getLogger(__name__)

bp = Blueprint("kv", __name__)


class PutValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Any = Field(...)
    ttl: int | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)


@bp.get("/v1/kv/<path:name>")
def get_value(name: str) -> dict[str, Any]:
    value, ttl = services().kv.get(name)
    return {"key": name, "value": value, "ttl": ttl}


@bp.put("/v1/kv/<path:name>")
def put_value(name: str) -> tuple[dict[str, Any], int]:
    body = parse(PutValue, json_body())
    created = services().kv.put(name, body.value, body.ttl)
    value, ttl = services().kv.get(name)
    return {"key": name, "value": value, "ttl": ttl}, 201 if created else 200


@bp.delete("/v1/kv/<path:name>")
def delete_value(name: str) -> tuple[str, int]:
    services().kv.delete(name)
    return "", 204
