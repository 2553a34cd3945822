"""Where the Redis server is and how to talk to it: options and URL parsing.

Accepted URLs (the forms redis-py and most tools use)::

    redis://[[username]:password@]host[:port][/db]
    rediss://[[username]:password@]host[:port][/db]      (TLS)
    unix://[[username]:password@]/path/to/redis.sock[?db=N]

Username and password are percent-decoded. Redis Cluster and Sentinel are not supported (the
client talks to one server); their URLs are refused here, at configuration time, with a
message that says so, rather than half-working at run time.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ._errors import RedisConfigError

DEFAULT_PORT = 6379

_CLUSTER_OR_SENTINEL = (
    "Redis Cluster and Sentinel are not supported: point the URL at one server "
    "(the primary), e.g. redis://host:6379/0"
)


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Everything the client needs; build it directly or with :meth:`from_url`."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    #: Connect to this Unix socket instead of ``host:port``.
    unix_path: str | None = None
    db: int = 0
    #: ACL user (Redis >= 6); ``None`` with a password authenticates as ``default``.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: TLS (``rediss://``).
    tls: bool = False
    #: CA bundle (PEM file) and/or directory to verify the server with; the system's
    #: trust store when both are unset.
    ca_file: str | None = None
    ca_path: str | None = None
    #: Client certificate and key (PEM), for servers with ``tls-auth-clients yes``.
    cert_file: str | None = None
    key_file: str | None = None
    #: Verify the server's certificate and name. Off only for tests and private networks.
    verify: bool = True
    #: The name the certificate must carry; ``host`` when unset.
    server_hostname: str | None = None
    #: A ready TLS context; overrides the TLS file options above.
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    #: Seconds for one call, from the moment it is made to its complete reply (waiting for a
    #: connection included).
    timeout: float = 1.0
    #: Seconds to connect, TLS handshake and AUTH/SELECT included.
    connect_timeout: float = 2.0
    #: Connections kept open at most. Concurrent calls share them (pipelining), so a few
    #: serve many concurrent requests.
    pool_size: int = 4
    #: After a failure, calls are refused without I/O for this long, doubling on each
    #: failure that follows up to ``backoff_max`` (jittered by up to a half).
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    #: A reply longer than this is a protocol error (a hostile or broken server cannot make
    #: the client buffer without bound).
    max_reply_bytes: int = 1 << 20
    #: ``CLIENT SETNAME`` on connect (shows in ``CLIENT LIST``); ``None`` to skip it.
    client_name: str | None = "trio-continuum"

    def __post_init__(self) -> None:
        if self.unix_path is None and not self.host:
            raise RedisConfigError("Redis host must not be empty")
        if not 0 < self.port < 65536:
            raise RedisConfigError(f"Redis port must be within 1..65535, got {self.port}")
        if self.db < 0:
            raise RedisConfigError(f"Redis db must be >= 0, got {self.db}")
        if self.username is not None and self.password is None:
            raise RedisConfigError("a Redis username needs a password")
        if self.unix_path is not None and self.tls:
            raise RedisConfigError("TLS over a Unix socket is not supported")
        for name in ("timeout", "connect_timeout", "backoff_initial", "backoff_max"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise RedisConfigError(f"Redis {name} must be a positive number, got {value}")
        if self.backoff_max < self.backoff_initial:
            raise RedisConfigError("Redis backoff_max must be >= backoff_initial")
        if self.pool_size < 1:
            raise RedisConfigError(f"Redis pool_size must be >= 1, got {self.pool_size}")
        if self.max_reply_bytes < 1024:
            raise RedisConfigError("Redis max_reply_bytes must be >= 1024")
        if self.key_file is not None and self.cert_file is None:
            raise RedisConfigError("a Redis TLS key_file needs a cert_file")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisOptions:
        """Options from a URL; keyword arguments set the rest (``timeout=``, ``ca_file=``...)
        and must not repeat what the URL says."""
        parsed = _parse_url(url)
        clash = sorted(set(parsed) & set(options))
        if clash:
            raise RedisConfigError(f"Redis option(s) {', '.join(clash)} already set by the URL")
        try:
            return cls(**parsed, **options)
        except TypeError as exc:
            raise RedisConfigError(f"invalid Redis option: {exc}") from exc

    def replace(self, **changes: Any) -> RedisOptions:
        return dataclasses.replace(self, **changes)

    @property
    def address(self) -> str:
        """Where the server is, for logs and errors: no user, no password."""
        if self.unix_path is not None:
            return f"unix://{self.unix_path}?db={self.db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{host}:{self.port}/{self.db}"

    def make_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context to connect with (``None`` without TLS). Built once per client."""
        if not self.tls:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file, capath=self.ca_path)
            if self.cert_file is not None:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise RedisConfigError(f"Redis TLS files: {exc}") from exc
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _parse_url(url: str) -> dict[str, Any]:
    try:
        parts = urlsplit(url)
        if "," in parts.netloc.rpartition("@")[2]:  # several hosts: a cluster's seed list
            raise RedisConfigError(_CLUSTER_OR_SENTINEL)
        port = parts.port
    except ValueError as exc:
        raise RedisConfigError(f"invalid Redis URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        if "sentinel" in scheme or "cluster" in scheme:
            raise RedisConfigError(_CLUSTER_OR_SENTINEL)
        raise RedisConfigError(
            f"Redis URL scheme must be redis://, rediss:// or unix://, got {scheme or 'none'}:"
        )
    out: dict[str, Any] = {}
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    if parts.fragment:
        raise RedisConfigError("a Redis URL takes no #fragment")
    if scheme == "unix":
        if not parts.path:
            raise RedisConfigError("a unix:// Redis URL needs a socket path")
        out["unix_path"] = parts.path
        db_text = query.pop("db", [None])[-1]
        if db_text is not None:
            out["db"] = _db(db_text)
    else:
        host = parts.hostname
        if not host:
            raise RedisConfigError("a Redis URL needs a host, e.g. redis://localhost:6379/0")
        out["host"] = host
        if port is not None:
            out["port"] = port
        path = parts.path.strip("/")
        if path:
            out["db"] = _db(path)
        out["tls"] = scheme == "rediss"
    if query:
        raise RedisConfigError(
            f"unknown Redis URL parameter(s): {', '.join(sorted(query))} "
            "(set TLS and timeouts as options, not in the URL)"
        )
    return out


def _db(text: str) -> int:
    if not text.isdigit():
        raise RedisConfigError(f"the Redis database must be a number >= 0, got {text!r}")
    return int(text)
