"""The process's log lines: plain text or JSON lines, redacted either way.

``MCP_BACKEND_LOG_FORMAT`` (``text``, the default, or ``json``; ``serve --log-format`` sets it)
chooses the format, so worker processes, which inherit the environment, log like their parent.
Every line, uvicorn's access log included, has key-shaped text and ``?token=`` values masked,
request targets logged without their query string, and its control characters escaped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

from actors.llm import redact
from runtime.text import escape_controls

__all__ = ["LOG_FORMATS", "LOG_FORMAT_ENV", "configure_logging"]

LOG_FORMAT_ENV = "MCP_BACKEND_LOG_FORMAT"
LOG_FORMATS = ("text", "json")

_QUERY_TOKEN = re.compile(r"([?&]token=)[^&\s\"']+", re.IGNORECASE)
# Messages carry what outsiders said (an upstream's error message, a name, a client's field):
# their control characters are escaped, a message's line breaks too; a traceback keeps its own.


def _scrub(text: str) -> str:
    return _QUERY_TOKEN.sub(r"\1[REDACTED]", redact(text))


class _EscapingFormatter(logging.Formatter):
    """A formatter whose message is one line and whose tracebacks hold no control character
    but their line breaks and tabs."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message, line_breaks=False)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape_controls(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(super().formatStack(stack_info))


class _NoQueryStrings(logging.Filter):
    """Drops the query string of every request target uvicorn logs (access log, socket lines).

    A token may travel as ``?token=``, or as ``?%74oken=`` (which the app decodes to the same
    name): no pattern over the raw text would catch every spelling, so queries are not logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("uvicorn") and isinstance(record.args, tuple):
            record.args = tuple(
                arg.split("?", 1)[0] + "?[query omitted]"
                if isinstance(arg, str) and arg.startswith("/") and "?" in arg
                else arg
                for arg in record.args
            )
        return True


class _TextFormatter(_EscapingFormatter):
    """``time level logger: message``, scrubbed (the traceback included)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return _scrub(super().format(record))


class _JsonFormatter(_EscapingFormatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``worker`` in a worker process, ``exception`` with its traceback; every text scrubbed."""

    def __init__(self) -> None:
        super().__init__()
        worker = os.environ.get("MCP_BACKEND_WORKER")
        self._worker = int(worker) if worker is not None and worker.isdigit() else None

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _scrub(escape_controls(record.getMessage(), line_breaks=False)),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        if record.exc_info:
            entry["exception"] = _scrub(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = _scrub(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str | None = None) -> None:
    """Send every log line to stderr at ``level`` in ``log_format`` (default: the environment's
    :data:`LOG_FORMAT_ENV`, else ``text``). Raises ``ValueError`` for an unknown format."""
    log_format = log_format or os.environ.get(LOG_FORMAT_ENV) or "text"
    if log_format not in LOG_FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV}: unknown log format {log_format!r}"
                         f" (expected one of: {', '.join(LOG_FORMATS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    handler.addFilter(_NoQueryStrings())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One INFO line per upstream HTTP request drowns everything else; errors still show.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
