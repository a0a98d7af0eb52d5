"""Gunicorn configuration of FlaskModel's web tier (``--config python:`` this module; every start
of gunicorn loads it, see ``gunicorn_launch``).

gunicorn imports this module in its master process and reads its public names as settings.
Every value comes from the ``FLASKMODEL_*`` environment through ``Settings``. It imports pydantic
and the settings only: no gevent, Flask or Redis (a test checks) — gunicorn's gevent worker
monkey-patches after fork, and a module imported before that keeps the blocking originals.
``--bind`` on the command line (a unix socket behind nginx, host:port otherwise) overrides the
default bind here.
"""

from __future__ import annotations

import os

from flaskmodel.deploy import gunicorn_launch as _launch
from flaskmodel.deploy.gunicorn_hooks import on_starting, post_worker_init
from flaskmodel.deploy.paths import address as _address
from flaskmodel.settings import Settings as _Settings

# gunicorn server hooks: the master takes the CPU policy; SIGTERM turns /readyz 503 at once
__all__ = ["on_starting", "post_worker_init"]

_settings = _Settings()

wsgi_app = _launch.WSGI_APP
bind = [_address(_settings.web.host, _settings.web.port)]
workers = _settings.web.workers
# gunicorn's gevent worker with a short loop for the plain requests nginx sends
# (``gunicorn_worker``); anything else takes gunicorn's own parser and loop.
worker_class = "flaskmodel.deploy.gunicorn_worker.LeanGeventWorker"
worker_connections = _settings.web.worker_connections
graceful_timeout = _settings.web.graceful_timeout
# For gevent workers this is only the heartbeat: a worker whose hub is blocked this long (CPU work
# in the web process, which is a bug) is replaced. Requests themselves wait cheaply on the hub.
timeout = 30
keepalive = _launch.KEEPALIVE_SECONDS
# Behind nginx, nginx's access log already records every request (and costs far less than a
# second line per request from Python); the command line turns gunicorn's own on where it faces
# clients itself (`flaskmodel up` without nginx, `flaskmodel serve --access-log`).
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
