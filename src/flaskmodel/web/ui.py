"""``/ui/``: the results viewer — recent jobs, and for a series job its labels along the series.

Static HTML, CSS and JavaScript served by Flask (nothing from a CDN). The page reads the public
API (``/v1/jobs``, ``/v1/jobs/<id>``) and the thumbnails the worker rendered
(``/v1/jobs/<id>/slices/<index>/thumbnail.png``).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

from flaskmodel.errors import NotFound
from flaskmodel.storage.redis import key
from flaskmodel.web.auth import owner
from flaskmodel.web.services import services

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static" / "ui"

bp = Blueprint("ui", __name__)


@bp.get("/ui")
def ui_redirect() -> BaseResponse:
    return redirect("/ui/", code=308)


@bp.get("/ui/")
def ui_index() -> Response:
    return send_from_directory(STATIC, "index.html", max_age=0)


@bp.get("/ui/<path:name>")
def ui_asset(name: str) -> Response:
    return send_from_directory(STATIC, name, max_age=300)


@bp.get("/v1/jobs/<job_id>/slices/<int:index>/thumbnail.png")
def thumbnail(job_id: str, index: int) -> Response:
    svc = services()
    svc.jobs.check_owner(job_id, owner())
    encoded = svc.redis.hget(key("thumbs", job_id), str(index))
    if encoded is None:
        raise NotFound(f"no thumbnail of slice {index} for job '{job_id}'")
    return Response(
        base64.b64decode(str(encoded)),
        mimetype="image/png",
        headers={"Cache-Control": "max-age=3600"},
    )
