"""Where the Redis server is and how to talk to it: options and URL parsing.

The URL grammar (``redis://``, ``rediss://``, ``unix://``; Cluster and Sentinel refused) is
:mod:`continuum.core.redis_url`'s, shared with the configuration's validation, so a bad URL
is refused at load time rather than half-working at run time.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
from dataclasses import dataclass, field
from typing import Any

from ...core.redis_url import parse_redis_url
from ._errors import RedisConfigError

DEFAULT_PORT = 6379


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
        try:
            parsed = parse_redis_url(url)
        except ValueError as exc:
            raise RedisConfigError(str(exc)) from None
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
