"""The Celery app of Celery's own command line: ``celery -A flaskmodel.worker.app inspect ping``,
``… purge``, ``… status``, ``… events`` and Celery Flower (``celery -A flaskmodel.worker.app
flower``).

``app`` is configured on first use, from the settings every entry point reads (environment, then
the settings file, then the defaults), by ``flaskmodel.jobs.broker.celery_config``, the one
place that builds Celery's configuration; importing this module reads nothing and connects to
nothing. It registers no tasks and starts no workers: ``flaskmodel worker`` builds its own app
from the same function and its command line (models, node name) and loads the models in its pool
processes.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from flaskmodel.jobs.broker import celery_config
from flaskmodel.settings import Settings


def configuration() -> dict[str, Any]:
    """Celery's configuration from the settings in force; a ValueError names what is missing."""
    settings = Settings.load()
    if not settings.redis.url:
        # Celery's own default broker (a RabbitMQ on localhost) would only time out.
        raise ValueError(
            "no Redis configured: set FLASKMODEL_REDIS__URL (with flaskmodel up's own Redis: "
            "unix://<run_dir>/redis.sock and FLASKMODEL_REDIS__PASSWORD from "
            "<run_dir>/redis.password) or write it in flaskmodel.toml"
        )
    return celery_config(settings)


app = Celery("flaskmodel", set_as_current=False)
# A promise: evaluated when the configuration is first read (Celery's lazy defaults).
app.add_defaults(configuration)
