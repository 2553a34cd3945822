"""Log setup for the ``trio-continuum`` command (embedders configure logging themselves), and
how a client-given value may appear in a log line (:func:`loggable`)."""

from __future__ import annotations

import logging
import os
import sys
import time

import msgspec

from ..config import LoggingConfig

#: The environment variable that gives a worker process its index (``server.workers``; the
#: parent, :mod:`continuum.actors.workers`, sets it): log lines say which worker spoke.
ENV_WORKER = "CONTINUUM_WORKER"

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
    """One JSON object per line: ts, level, logger, msg (and exc when there is one), and
    ``worker`` (its index) in a worker of ``server.workers: N``.

    An access line (``continuum.access``) carries its fields as top-level keys
    (request_id, method, path, status, model, backend, duration_ms, upstream_ms, attempts,
    stream, bytes_out); its ``msg`` is only ``"<method> <path> <status>"``, not the whole
    text line again.
    """

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry["msg"] = f"{access.get('method')} {access.get('path')} {access.get('status')}"
            entry.update(access)
        else:
            entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry).decode()


def worker_index() -> int | None:
    """This process's worker index when it is one of ``server.workers``, else None."""
    value = os.environ.get(ENV_WORKER, "")
    return int(value) if value.isdigit() else None


def configure_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    worker = worker_index()
    if config.format == "json":
        handler.setFormatter(JSONFormatter(worker))
    else:
        who = "" if worker is None else f"worker {worker} "
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s {who}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[config.level])
    # Audit lines (changes made through the admin API, reloads) are written whatever the
    # level: an operator who logs only errors still learns who changed the config.
    logging.getLogger("continuum.audit").setLevel(min(logging.INFO, _LEVELS[config.level]))
