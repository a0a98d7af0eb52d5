"""The route table: every API route once, with the handler that answers it.

Each ``Route`` names its URL rule (werkzeug's syntax), methods, handler (``Services, Call ->
Reply``, no web framework), metrics label, the headers its handler reads, and three flags:
``fast`` (the fast WSGI layer, ``web.fast_routes``, answers it without Flask), ``open`` (no
API key, no rate limit) and ``counts_itself`` (the fast layer leaves the request's rate-limit
count to the handler, ``Call.rate``: its sync call's push makes it, and a handler must
``admit`` it before anything else with an effect). Both adapters are generated from this
table: the Flask views (``web.views``) and the fast layer, which matches paths with the Flask
app's own ``url_map``, so the two cannot disagree about which route a request is. The Flask-only
views (static files, the API description, Swagger UI) are not routes of this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.routing import Rule

from flaskmodel.web import health, infer_v2, jobs, kv, legacy, metrics, predict_v1, series
from flaskmodel.web.call import Call, Reply, environ_keys
from flaskmodel.web.infer_v2 import HEADER_LENGTH
from flaskmodel.web.services import Services

Handler = Callable[[Services, Call], Reply]
IDEMPOTENCY = "Idempotency-Key"


@dataclass(frozen=True)
class Route:
    rule: str
    methods: tuple[str, ...]
    handler: Handler
    fast: bool = False
    open: bool = False
    counts_itself: bool = False
    headers: tuple[str, ...] = ()
    label: str = ""  # the metrics label; the rule when empty
    #: ``<module>.<handler>``: the Flask endpoint and the OpenAPI operation.
    endpoint: str = field(init=False)
    environ_headers: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self) -> None:
        module = self.handler.__module__.rsplit(".", 1)[-1]
        object.__setattr__(self, "endpoint", f"{module}.{self.handler.__name__}")
        object.__setattr__(self, "environ_headers", environ_keys(self.headers))
        object.__setattr__(self, "label", self.label or self.rule)


GET, POST, PUT, DELETE = ("GET",), ("POST",), ("PUT",), ("DELETE",)
_JOB = "/v1/jobs/<job_id>"
_LEGACY = "/inference/<series_uid>/<int:start>/<int:end>"
_V2_MODEL = "/v2/models/<name>"
_V2_VERSION = "/v2/models/<name>/versions/<version>"
_INFER: dict[str, Any] = {
    "fast": True,
    "counts_itself": True,
    "headers": (HEADER_LENGTH, "Prefer", IDEMPOTENCY),
}

ROUTES: tuple[Route, ...] = (
    Route("/healthz", GET, health.healthz, open=True),
    Route("/readyz", GET, health.readyz, open=True),
    Route("/metrics", GET, metrics.metrics),
    Route("/v1/jobs", POST, jobs.create_job, fast=True, headers=("Prefer", IDEMPOTENCY)),
    Route("/v1/jobs", GET, jobs.list_jobs),
    Route(_JOB, GET, jobs.get_job, fast=True),
    Route(_JOB, DELETE, jobs.cancel_job),
    Route(_JOB + "/slices/<int:index>/thumbnail.png", GET, jobs.thumbnail),
    Route("/v1/kv/<path:name>", GET, kv.get_value),
    Route("/v1/kv/<path:name>", PUT, kv.put_value),
    Route("/v1/kv/<path:name>", DELETE, kv.delete_value),
    Route("/v1/series/<series_uid>", GET, series.received_series),
    Route("/v1/series/<series_uid>/results", GET, series.series_results),
    Route(
        "/inference/<series_uid>/<int:start>/<int:end>",
        GET,
        legacy.inference,
        headers=(IDEMPOTENCY,),
    ),
    Route("/get_result/<task_id>", GET, legacy.get_result),
    Route("/v1/models/<path:path>", GET, predict_v1.status_or_metadata),
    Route("/v1/models/<path:path>", POST, predict_v1.predict, fast=True, counts_itself=True),
    Route("/v2", GET, infer_v2.server_metadata),
    Route("/v2/health/live", GET, infer_v2.live, open=True),
    Route("/v2/health/ready", GET, infer_v2.ready, open=True),
    Route(_V2_MODEL, GET, infer_v2.model_metadata),
    Route(_V2_VERSION, GET, infer_v2.model_metadata),
    Route(_V2_MODEL + "/ready", GET, infer_v2.model_ready),
    Route(_V2_VERSION + "/ready", GET, infer_v2.model_ready),
    Route(_V2_MODEL + "/infer", POST, infer_v2.infer, **_INFER),
    Route(_V2_VERSION + "/infer", POST, infer_v2.infer, **_INFER),
)


class RouteRule(Rule):
    """A werkzeug rule that knows its table row (None for the Flask-only views); the Flask
    app makes every rule of its ``url_map`` one (``url_rule_class``)."""

    def __init__(self, string: str, *args: Any, route: Route | None = None, **options: Any) -> None:
        super().__init__(string, *args, **options)
        self.route = route


def route_of(rule: Rule | None) -> Route | None:
    """The table row of a rule of the app's ``url_map``."""
    return rule.route if isinstance(rule, RouteRule) else None
