"""Logging for the gateway and the engine server: one configuration for our loggers and uvicorn's.

Nothing a client sends reaches a log line raw. Text logs escape control characters in every message (a request
field named "x\\nFORGED ..." cannot start a line of its own); JSON logs (`log_format: json`, one object a line, for
log pipelines) are escaped by the encoder. Besides the C0 controls and DEL, text logs escape what other tools take
for a line break (NEL, U+2028, U+2029) and the bidirectional controls that reorder what a reader sees (U+202A-202E,
U+2066-2069, U+200E/200F, U+061C). Tracebacks stay multi-line in text logs; they are our code's, not the client's.
By default no prompt, completion or credential is logged: only ids, names, routes and sizes; and every message and
traceback passes through the redaction rule (runtime.redact), so a URL's password never reaches a log line.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from runtime.redact import redact

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CONTROL = ({code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
            | {code: f"\\u{code:04x}" for code in (0x85, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A),
                                                  0x200E, 0x200F, 0x061C)})
_LINE_BREAKS_AND_BIDI = {code: f"\\u{code:04x}" for code in _CONTROL if code > 0x7F}  # JSON escapes of the same
# uvicorn's own loggers: propagated to ours instead of its own handlers and formats
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def escape(text: str) -> str:
    """Control characters as visible escapes (`\\n`, `\\x1b`), so text cannot forge or hide log lines."""
    return text.translate(_CONTROL)


class EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        record.message = escape(redact(record.message))
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802
        return redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": redact(record.getMessage())}
        entry |= getattr(record, "fields", None) or {}
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        # the encoder escapes C0 controls; NEL, U+2028/9 and bidi controls as JSON escapes too (same meaning)
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_LINE_BREAKS_AND_BIDI)


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


class Outage:
    """Logs a failure that repeats (a store down, polled every second) once when it starts, with its traceback, and
    once when it ends; the polls in between go to debug. One per thing that can fail."""

    def __init__(self, logger: logging.Logger, what: str):
        self.logger, self.what, self.since = logger, what, None

    def failed(self, error: BaseException, consequence: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.logger.error("%s failed: %s; %s", self.what, error, consequence, exc_info=error)
        else:
            self.logger.debug("%s still fails: %s", self.what, error)

    def recovered(self) -> None:
        if self.since is not None:
            self.logger.warning("%s works again after %.0f s", self.what, time.monotonic() - self.since)
            self.since = None
