"""``/ui/``: the results viewer — recent jobs, and for a series job its labels along the series.

Static HTML, CSS and JavaScript served by Flask alone (nothing from a CDN; not in the route
table: files, not data). The page reads the public API (``/v1/jobs``, ``/v1/jobs/<id>``) and the
thumbnails the worker rendered (``/v1/jobs/<id>/slices/<index>/thumbnail.png``).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

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
