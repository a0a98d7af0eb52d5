"""Logging set-up for FlaskModel's processes: text or JSON lines on stderr.

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
from datetime import UTC, datetime

from flaskmodel.settings import Settings

logger = logging.getLogger(__name__)


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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log.json_lines:
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(
            SafeText("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log.level.upper())
