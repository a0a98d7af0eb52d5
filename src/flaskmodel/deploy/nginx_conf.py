"""nginx's configs: the foreground stack's nginx.conf with its site, and the deploy set's site.

The site (template ``flaskmodel.conf``) proxies to gunicorn — one, or several web hosts balanced
by least connections — with the request limits of the ``web`` settings, answers nginx's own
errors (every status nginx answers itself) as JSON in the app's ``{"error", "type"}`` shape,
restricts ``/metrics`` to ``metrics.allow`` (or, with ``metrics.port``, serves it from a server of
its own on that port only, the API port answering it 404), and, when ``dicom.enabled``, streams
``/dicomweb/`` (STOW-RS uploads) to the DICOM front door (``flaskmodel dicom``).
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import NamedTuple

from flaskmodel.deploy.files import fill, write
from flaskmodel.deploy.gunicorn_launch import KEEPALIVE_SECONDS
from flaskmodel.deploy.paths import address, user_name
from flaskmodel.settings import Settings

UPSTREAM_KEEPALIVE_SECONDS = 60
"""How long nginx keeps an idle upstream connection; below gunicorn's keep-alive."""
DICOMWEB_TIMEOUT_SECONDS = 600
"""nginx's send/read timeouts towards the DICOM front door: a STOW-RS upload of a whole study
may stall while the front door writes it, and the answer comes only after every instance is
stored."""
ERROR_PREFIX = "/_flaskmodel/error/"
"""Where the internal locations of nginx's own error answers live (a client asking for one gets
the JSON 404)."""
DICOMWEB_ERROR_PREFIX = ERROR_PREFIX + "dicomweb/"


class NginxError(NamedTuple):
    """One status nginx answers itself: the code it raises (``error_page``), the status sent,
    and the body's ``type`` (the name the app gives that status) and message."""

    code: int
    status: int
    type: str
    message: str
    retry_after: bool = False


def nginx_errors(
    upstream: str, max_body: int, *, body: str = "request body", too_large: str = ""
) -> tuple[NginxError, ...]:
    """Every error nginx itself can answer in front of ``upstream`` (its name in messages), whose
    bodies may be ``max_body`` bytes; ``too_large``: the upstream's own type for a body over it
    (werkzeug's ``request_entity_too_large`` when empty)."""
    return (
        NginxError(400, 400, "bad_request", "malformed request (request line, path or header)"),
        NginxError(403, 403, "forbidden", "this address may not read this path"),
        NginxError(404, 404, "not_found", "not found"),
        NginxError(405, 405, "method_not_allowed", "method not allowed"),
        # nginx closes a timed-out connection without an answer; named in case it ever answers.
        NginxError(408, 408, "request_timeout", "the request was not received in time"),
        NginxError(
            413,
            413,
            too_large or "request_entity_too_large",
            f"{body} is larger than the limit of {max_body} bytes",
        ),
        NginxError(414, 414, "request_uri_too_long", "request URI too long"),
        # nginx's own code for a header line or header too large; RFC 6585 names the status.
        NginxError(494, 431, "request_header_fields_too_large", "request header too large"),
        NginxError(500, 500, "internal_error", "internal server error"),
        NginxError(501, 501, "not_implemented", "transfer coding not implemented"),
        NginxError(
            502, 502, "bad_gateway", f"the {upstream} is not answering; try again shortly", True
        ),
        NginxError(503, 503, "service_unavailable", "unavailable; try again shortly", True),
        NginxError(504, 504, "gateway_timeout", f"the {upstream} did not answer in time"),
        NginxError(505, 505, "http_version_not_supported", "HTTP version not supported"),
    )


def write_stack_nginx(
    nginx: Path,
    settings: Settings,
    *,
    conf: Path,
    prefix: Path,
    gunicorn_sock: Path,
    dicom_sock: Path | None,
) -> list[str]:
    """Write the stack's nginx.conf and site (listening on web.host:web.port, proxying to the
    unix sockets); returns the command that runs nginx in the foreground on them."""
    prefix.mkdir(exist_ok=True)
    site = prefix / "flaskmodel.conf"
    listen = address(settings.web.host, settings.web.port)
    dicom = f"unix:{dicom_sock}" if dicom_sock is not None else None
    write(site, _site(settings, upstreams=[f"unix:{gunicorn_sock}"], listen=listen, dicom=dicom))
    write(conf, _nginx_main(prefix, site))
    return [str(nginx), "-e", "stderr", "-p", str(prefix), "-c", str(conf)]


def deploy_site(settings: Settings, *, upstreams: list[str], dicom: str | None) -> str:
    """The deploy set's site (for /etc/nginx/sites-available): listens on port 80, balances over
    ``upstreams``; ``dicom`` is the DICOM front door's HTTP address (None: no ``/dicomweb/``)."""
    return _site(settings, upstreams=upstreams, listen="80", dicom=dicom)


def _metrics_listen(listen: str, port: int) -> str:
    """The metrics server's ``listen``: the API's address (if it names one) on ``port``."""
    host, sep, _ = listen.rpartition(":")
    return f"{host}:{port}" if sep else str(port)


def _site(settings: Settings, *, upstreams: list[str], listen: str, dicom: str | None) -> str:
    upstream, location = _dicom_blocks(settings, dicom)
    errors = nginx_errors("web tier", settings.web.max_request_bytes)
    pages = _error_pages(errors, ERROR_PREFIX)
    error_locations = _error_locations(errors, ERROR_PREFIX)
    port = settings.metrics.port
    metrics_server = ""
    if port is None:
        metrics_location = _metrics_location(settings.metrics.allow)
    else:
        metrics_listen = _metrics_listen(listen, port)
        if metrics_listen == listen:
            raise ValueError(f"metrics.port {port} is the API's port: leave it unset instead")
        metrics_location = (
            "\n    # metrics.port: /metrics is served on its own port only.\n"
            "    location = /metrics { return 404; }\n"
        )
        metrics_server = _metrics_server(
            metrics_listen, settings.metrics.allow, pages, error_locations
        )
    return fill(
        "flaskmodel.conf",
        servers=_upstream_servers(upstreams),
        gunicorn_keepalive=str(KEEPALIVE_SECONDS),
        upstream_keepalive=f"{UPSTREAM_KEEPALIVE_SECONDS}s",
        listen=listen,
        max_body=str(settings.web.max_request_bytes),
        header_timeout=_nginx_seconds(settings.web.client_header_timeout),
        body_timeout=_nginx_seconds(settings.web.client_body_timeout),
        read_timeout=f"{settings.jobs.time_limit + 30}s",
        metrics_location=metrics_location,
        metrics_server=metrics_server,
        dicom_upstream=upstream,
        dicom_location=location,
        error_pages=pages,
        error_locations=error_locations,
    )


def _dicom_blocks(settings: Settings, server: str | None) -> tuple[str, str]:
    """The upstream block and the ``/dicomweb/`` location of the DICOM front door (empty when
    it is off). The path reaches the front door unchanged (``/dicomweb/studies``)."""
    if server is None:
        return "", ""
    limit = settings.dicom.max_stow_bytes
    timeout = f"{DICOMWEB_TIMEOUT_SECONDS}s"
    upstream = f"\nupstream flaskmodel_dicom {{\n    server {server};\n}}\n"
    # A body over the limit has the front door's own type for it, and 502/504 name the front
    # door; error_page inside a location replaces the server's list, so every status is named
    # again (the others to the server's locations).
    errors = nginx_errors(
        "DICOM front door", limit, body="STOW-RS body", too_large="payload_too_large"
    )
    shared = nginx_errors("web tier", settings.web.max_request_bytes)
    own = tuple(e for e, s in zip(errors, shared, strict=True) if e != s)
    pages = "".join(
        f"    {_error_page(e, DICOMWEB_ERROR_PREFIX if e in own else ERROR_PREFIX)}\n"
        for e in errors
    )
    location = (
        "\n    # DICOMweb STOW-RS (`flaskmodel dicom`): a study upload may be far larger than any\n"
        "    # API body; it streams through to the front door as it arrives instead of being\n"
        "    # spooled to nginx's disk first, and may take long.\n"
        "    location /dicomweb/ {\n"
        f"        client_max_body_size {limit};\n"
        "        proxy_request_buffering off;\n"
        f"        proxy_send_timeout {timeout};\n"
        f"        proxy_read_timeout {timeout};\n"
        f"{pages}"
        "        proxy_pass http://flaskmodel_dicom;\n"
        "    }\n"
        f"{_error_locations(own, DICOMWEB_ERROR_PREFIX)}"
    )
    return upstream, location


def _error_pages(errors: tuple[NginxError, ...], prefix: str) -> str:
    return "\n".join(_error_page(e, prefix) for e in errors)


def _error_page(error: NginxError, prefix: str) -> str:
    # ``=status``: nginx would send its 494 as 400 whatever the location returns.
    status = f"={error.status} " if error.status != error.code else ""
    return f"    error_page {error.code} {status}{prefix}{error.code};"


def _error_locations(errors: tuple[NginxError, ...], prefix: str) -> str:
    """An internal location per error answering its JSON (``types {}``: JSON whatever extension
    the URI has)."""
    lines = []
    for e in errors:
        body = json.dumps({"error": e.message, "type": e.type}) + "\\n"
        if any(c in body for c in "'$"):  # nginx's quote and variables
            raise ValueError(f"cannot write {body!r} in an nginx return")
        retry = " add_header Retry-After 2 always;" if e.retry_after else ""
        json_type = "types {} default_type application/json;"
        lines.append(
            f"    location = {prefix}{e.code} {{ internal; {json_type}{retry} "
            f"return {e.status} '{body}'; }}\n"
        )
    return "".join(lines)


def _metrics_location(allow: list[str]) -> str:
    """``/metrics`` for the ``metrics.allow`` addresses only; nothing (public) when empty."""
    if not allow:
        return ""
    rules = "".join(f"        allow {entry};\n" for entry in allow)
    return (
        "\n    # metrics.allow: only these addresses may scrape /metrics.\n"
        "    location = /metrics {\n"
        f"{rules}"
        "        deny all;\n"
        "        proxy_pass http://flaskmodel_web;\n"
        "    }\n"
    )


def _metrics_server(listen: str, allow: list[str], pages: str, error_locations: str) -> str:
    """The server of ``metrics.port``: ``/metrics`` (for ``allow`` only, when set), proxied to the
    web tier like the API's; every other path answers the JSON 404."""
    rules = "".join(f"        allow {entry};\n" for entry in allow)
    if allow:
        rules += "        deny all;\n"
    return (
        "\n# metrics.port: Prometheus scrapes here; the API port answers /metrics 404.\n"
        "server {\n"
        f"    listen {listen};\n"
        "    server_name _;\n"
        "    proxy_http_version 1.1;\n"
        '    proxy_set_header Connection "";\n'
        "    proxy_set_header Host $http_host;\n"
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "    proxy_set_header X-Forwarded-Proto $scheme;\n"
        "    proxy_set_header X-Request-Id $request_id;\n"
        "    proxy_connect_timeout 5s;\n"
        "    proxy_read_timeout 60s;\n"
        "    location = /metrics {\n"
        f"{rules}"
        "        proxy_pass http://flaskmodel_web;\n"
        "    }\n"
        "    location / { return 404; }\n"
        "    proxy_intercept_errors off;\n"
        f"{pages}\n"
        f"{error_locations}"
        "}\n"
    )


def _nginx_seconds(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _upstream_servers(servers: list[str]) -> str:
    """The upstream block's server lines: one gunicorn, or several web hosts balanced by least
    connections; a host that fails 3 times within 5 s is skipped for 5 s (a request that
    cannot connect goes to the next host at once)."""
    if len(servers) == 1:
        return f"    server {servers[0]} fail_timeout=0;"
    lines = ["    least_conn;"]
    lines += [f"    server {server} max_fails=3 fail_timeout=5s;" for server in servers]
    return "\n".join(lines)


def _nginx_main(prefix: Path, site: Path) -> str:
    # A root master would start its workers as "nobody", who cannot reach the gunicorn socket
    # in this user's 0700 run directory: keep the workers as the invoking user.
    user_line = f"user {user_name()};" if os.geteuid() == 0 else ""
    soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_nofile == resource.RLIM_INFINITY:
        soft_nofile = 65536
    return fill(
        "nginx.conf",
        prefix=str(prefix),
        site=str(site),
        user_line=user_line,
        worker_processes=str(min(os.cpu_count() or 1, 4)),
        # Each proxied request holds two descriptors; stay inside the open-file limit.
        worker_connections=str(max(512, min(8192, soft_nofile - 64))),
    )
