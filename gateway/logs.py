"""Logging for the gateway and the engine server: one configuration for our loggers and uvicorn's.

Nothing a client sends reaches a log line raw. Text logs escape control characters in every message (a request
field named "x\\nFORGED ..." cannot start a line of its own); JSON logs (`log_format: json`, one object a line, for
log pipelines) are escaped by the encoder. Tracebacks stay multi-line in text logs; they are our code's, not the
client's. By default no prompt, completion or credential is logged: only ids, names, routes and sizes.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
# uvicorn's own loggers: propagated to ours instead of its own handlers and formats
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def escape(text: str) -> str:
    """Control characters as visible escapes (`\\n`, `\\x1b`), so text cannot forge or hide log lines."""
    return text.translate(_CONTROL)


class EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        record.message = escape(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry |= getattr(record, "fields", None) or {}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root logger's one handler, with uvicorn's loggers sent through it (pass `log_config=None` to uvicorn)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else EscapingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        logger.setLevel(level.upper())
