"""Redis URLs: the grammar shared by the config's validation and the Redis client.

Sans-IO (it only reads a string), so the configuration can refuse a bad URL at load time,
before anything binds, with the same words the client would use at run time::

    redis://[[username]:password@]host[:port][/db]
    rediss://[[username]:password@]host[:port][/db]      (TLS)
    unix://[[username]:password@]/path/to/redis.sock[?db=N]

Username and password are percent-decoded. Redis Cluster and Sentinel are refused: the client
talks to one server.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CLUSTER_OR_SENTINEL = (
    "Redis Cluster and Sentinel are not supported: point the URL at one server "
    "(the primary), e.g. redis://host:6379/0"
)


def parse_redis_url(url: str) -> dict[str, Any]:
    """The connection options a Redis URL sets (``host``, ``port``, ``db``, ``username``,
    ``password``, ``tls``, ``unix_path``); ``ValueError`` saying what is wrong. No message
    carries the URL's password."""
    try:
        parts = urlsplit(url)
        if "," in parts.netloc.rpartition("@")[2]:  # several hosts: a cluster's seed list
            raise ValueError(CLUSTER_OR_SENTINEL)
        port = parts.port
    except ValueError as exc:
        if str(exc) == CLUSTER_OR_SENTINEL:
            raise
        raise ValueError(f"invalid Redis URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        if "sentinel" in scheme or "cluster" in scheme:
            raise ValueError(CLUSTER_OR_SENTINEL)
        raise ValueError(
            f"Redis URL scheme must be redis://, rediss:// or unix://, got {scheme or 'none'}:"
        )
    out: dict[str, Any] = {}
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    if parts.fragment:
        raise ValueError("a Redis URL takes no #fragment")
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// Redis URL needs a socket path")
        out["unix_path"] = parts.path
        db_text = query.pop("db", [None])[-1]
        if db_text is not None:
            out["db"] = _db(db_text)
    else:
        host = parts.hostname
        if not host:
            raise ValueError("a Redis URL needs a host, e.g. redis://localhost:6379/0")
        out["host"] = host
        if port is not None:
            out["port"] = port
        path = parts.path.strip("/")
        if path:
            out["db"] = _db(path)
        out["tls"] = scheme == "rediss"
    if query:
        raise ValueError(
            f"unknown Redis URL parameter(s): {', '.join(sorted(query))} "
            "(set TLS and timeouts as options, not in the URL)"
        )
    if "username" in out and "password" not in out:
        raise ValueError("a Redis username needs a password")
    return out


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the Redis database must be a number >= 0, got {text!r}")
    return int(text)
