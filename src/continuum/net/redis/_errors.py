"""The Redis client's exceptions, and the one place where lower-level errors become them.

Callers catch :class:`RedisError` and decide (fail open or closed); the subclasses say why,
for metrics and logs. No message carries a password: the client never formats its options
into one.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import hiredis
import trio


class RedisError(Exception):
    """Base of every error the Redis client raises."""


class RedisConfigError(RedisError, ValueError):
    """A URL or an option the client cannot use (raised at configuration time)."""


class RedisConnectionError(RedisError):
    """Connecting failed, or the connection broke before the reply arrived."""


class RedisUnavailableError(RedisConnectionError):
    """Refused without any I/O: Redis failed recently and the back-off has not passed."""


class RedisTimeoutError(RedisError):
    """No complete reply within the call's timeout (the connection is dropped)."""


class RedisProtocolError(RedisError):
    """The server sent something that is not RESP, or a reply over the size limit."""


class RedisReplyError(RedisError):
    """The server answered with an error reply (``-ERR ...``); ``code`` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0]


class RedisAuthError(RedisReplyError):
    """``AUTH`` was refused, or a command needs authentication or a permission it lacks."""


class RedisNoScriptError(RedisReplyError):
    """``EVALSHA`` named a script the server does not hold (the client reloads it)."""


_AUTH_CODES = frozenset({"WRONGPASS", "NOAUTH", "NOPERM"})


def reply_error(message: str) -> RedisReplyError:
    """The exception for an error reply, chosen by its code."""
    code = message.split(" ", 1)[0]
    if code == "NOSCRIPT":
        return RedisNoScriptError(message)
    if code in _AUTH_CODES or message.startswith("ERR invalid password"):
        return RedisAuthError(message)
    return RedisReplyError(message)


def as_redis_error(exc: BaseException, what: str) -> RedisError | None:
    """The :class:`RedisError` for a lower-level failure during ``what`` (``None`` when
    ``exc`` is not an I/O or protocol failure: a bug, a cancellation, an interrupt)."""
    if isinstance(exc, RedisError):
        return exc
    if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, OSError)):
        # ssl.SSLError is an OSError; trio wraps TLS failures in BrokenResourceError.
        return RedisConnectionError(f"{what}: {_describe(exc)}")
    if isinstance(exc, hiredis.ProtocolError):
        return RedisProtocolError(f"{what}: protocol error: {exc}")
    if isinstance(exc, MemoryError):
        # hiredis allocates a declared array length up front: a hostile header can ask
        # for more than the machine has. That is the server's fault, not ours.
        return RedisProtocolError(f"{what}: a reply declared an impossible size")
    return None


@contextmanager
def map_io_errors(what: str) -> Iterator[None]:
    """Raise the :func:`as_redis_error` of whatever fails inside the block."""
    try:
        yield
    except Exception as exc:
        error = as_redis_error(exc, what)
        if error is None or error is exc:
            raise
        raise error from exc


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        exc = cause
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
