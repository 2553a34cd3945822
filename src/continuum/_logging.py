"""Log setup for the ``trio-continuum`` command (embedders configure logging themselves), and
how a client-given value may appear in a log line (:func:`loggable`)."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

from ._config import LoggingConfig

_LEVELS = {
    "trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
    "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_encode = msgspec.json.Encoder().encode

#: Longest client-given value (model, path, request id) an access line keeps, in characters.
LOGGED_VALUE_MAX = 256


def loggable(text: str, limit: int = LOGGED_VALUE_MAX) -> str:
    """A client-given value made safe for one log line: cut to ``limit`` characters (saying
    how many were cut, so a 1 MB model name costs a log line of normal size) and escaped
    when it has non-printable characters."""
    if len(text) > limit:
        text = f"{text[:limit]}...(+{len(text) - limit} chars)"
    return text if text.isprintable() else repr(text)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is one).

    An access line (``continuum.access``) also carries its fields as top-level keys
    (request_id, method, path, status, model, backend, duration_ms, upstream_ms, attempts,
    stream, bytes_out).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


def configure_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[config.level])
