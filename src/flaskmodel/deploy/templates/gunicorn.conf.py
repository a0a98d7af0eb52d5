"""Gunicorn configuration of FlaskModel's web tier.

Every value comes from the FLASKMODEL_* environment through ``Settings`` (pydantic only: no
gevent, Flask or Redis import here — gunicorn's gevent worker monkey-patches after fork, this
file does not). It binds the settings' host:port; when nginx fronts gunicorn, the command line's
``--bind`` (a unix socket in ``flaskmodel up``, loopback in a deploy) overrides that.
"""

from __future__ import annotations

import os

from flaskmodel.deploy.gunicorn_hooks import post_worker_init
from flaskmodel.settings import Settings

__all__ = ["post_worker_init"]  # a gunicorn server hook: SIGTERM turns /readyz 503 at once

_settings = Settings()


def _address(host: str, port: int) -> str:
    """``host:port`` as gunicorn's --bind spells it (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


wsgi_app = "flaskmodel.web:create_app()"
bind = [_address(_settings.web.host, _settings.web.port)]
workers = _settings.web.workers
worker_class = "gevent"
worker_connections = _settings.web.worker_connections
graceful_timeout = _settings.web.graceful_timeout
# For gevent workers this is only the heartbeat: a worker whose hub is blocked this long (CPU work
# in the web process, which is a bug) is replaced. Requests themselves wait cheaply on the hub.
timeout = 30
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx, never gunicorn, closes an idle
# connection; otherwise nginx may reuse one that gunicorn is closing and answer 502.
keepalive = 75
# Behind nginx, nginx's access log already records every request (and costs far less than a
# second line per request from Python); gunicorn writes its own only when it faces clients
# itself (`flaskmodel up` without nginx adds --access-logfile, `flaskmodel serve` too).
accesslog = None
errorlog = "-"
loglevel = _settings.log.level.lower()
# Behind nginx the peer is nginx (on a unix socket: blank); the client is in X-Forwarded-For.
access_log_format = '%(h)s %({x-forwarded-for}i)s "%(r)s" %(s)s %(b)s %(M)sms'
proc_name = "flaskmodel-web"
# supervisord is the control plane; gunicorn's own control socket would default to one path
# under $HOME shared by every gunicorn of this user.
control_socket_disable = True
# The unix socket behind nginx is for this user only.
umask = 0o077
# The heartbeat file's fchmod can block a worker on a disk-backed directory; tmpfs cannot.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
