"""Logging set-up for FlaskModel's processes: text or JSON lines on stderr, with the job id.

Job tracing: code working on a job runs inside ``job_context(job_id)`` (a context variable, so
per thread and per greenlet); every record logged meanwhile carries ``job_id`` — a field of
its JSON line, ``[job <id>]`` in text. Celery's own records about a FlaskModel job (received,
succeeded, failed) carry it too, read from the task id they name (a job's task id is its id).

Log lines cannot be forged from requests: a message (with its arguments: paths, header values,
names from a request body) has its control characters escaped in text logs (CR as ``\\r``, LF as
``\\n``, others as ``\\xNN``, Unicode line separators as ``\\uNNNN``), and a traceback's lines
are indented, so every line that starts at column 0 is a record's own. JSON lines are escaped by
JSON itself.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from flaskmodel.settings import Settings

JOB_ID: ContextVar[str | None] = ContextVar("flaskmodel_job_id", default=None)
# Celery's task log records name the task in these argument fields.
_CELERY_TASK = "flaskmodel.run_job"


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Tag every record logged inside the block (this thread or greenlet) with ``job_id``."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


def set_job_id(job_id: str | None) -> None:
    """Tag the rest of the current request's (greenlet's) records with ``job_id``."""
    JOB_ID.set(job_id)


class JobIdFilter(logging.Filter):
    """Sets ``record.job_id``: the job being worked on, or the job a Celery record is about."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = JOB_ID.get()
        if job_id is None and record.name.startswith("celery"):
            args = record.args
            if isinstance(args, dict) and args.get("name") == _CELERY_TASK:
                job_id = str(args.get("id") or "") or None
        record.job_id = job_id
        return True


# C0 controls but TAB, DEL, C1's NEL and the Unicode line/paragraph separators.
_UNSAFE = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F) if code != 0x09},
    0x0D: "\\r",
    0x0A: "\\n",
    0x85: "\\x85",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape_controls(text: str) -> str:
    """``text`` with every character that could break a log line escaped."""
    return text.translate(_UNSAFE)


class SafeText(logging.Formatter):
    """The text format, with messages escaped and tracebacks indented."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + _indent(record.exc_text)
        if record.stack_info:
            line += "\n" + _indent(self.formatStack(record.stack_info))
        return line


def _indent(text: str) -> str:
    return "\n".join("    " + escape_controls(part) for part in text.splitlines())


class JsonLines(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class Text(SafeText):
    """``time level pid logger: message`` (escaped), `` [job <id>]`` when the record has one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job_id = getattr(record, "job_id", None)
        return f"{text} [job {job_id}]" if job_id else text


def configure(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if settings.log.json_lines else Text())
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log.level.upper())


def configure_once(settings: Settings) -> None:
    """``configure`` unless the process's logging is set up already (a test runner, a host
    application): the web app calls this, gunicorn leaves the root logger alone."""
    if not logging.getLogger().handlers:
        configure(settings)
