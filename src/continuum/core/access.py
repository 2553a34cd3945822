"""Who is calling and what they may do: client keys looked up by hash, scopes, allowed
models, and the client's address behind trusted proxies.

Sans-IO: plain values in, plain answers out. The caller gives the presented key bytes, the
time, the peer address and the header values; the I/O layer decides what to answer.

Why keys are looked up by their SHA-256
    The table holds digests only, so a config may carry ``key_sha256`` instead of the key,
    and a lookup is one hash and one dict probe (about 1 µs) whatever the number of keys.
    A key presented again skips the hash: :class:`KeyTable` remembers the valid keys it
    found by their bytes (process memory then holds the keys clients sent, as it holds
    every request while it is read; never a key that nobody presented). A digest lookup
    leaks nothing through timing that helps guess a key (the attacker would need a
    preimage).

Why the rightmost untrusted hop of X-Forwarded-For
    Every proxy appends the address it received the request from. Hops written by the
    client itself are on the left and can say anything; the rightmost address that none of
    our ``trusted_proxies`` wrote is the last one a trusted proxy saw connect, hence the
    client as far as anyone trustworthy knows.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, final

from .realtime import REALTIME_PATH

#: A presented key longer than this is unknown without being hashed (no configured key is
#: that long; hashing a 64 KiB header would cost tens of microseconds per request).
MAX_KEY_LENGTH: Final = 512
#: Presented keys a :class:`KeyTable` remembers at most (each maps to a configured key).
MAX_CACHED_KEYS: Final = 4096
#: X-Forwarded-For hops examined from the right at most: a client can send thousands, and
#: a chain of trusted proxies longer than this is not a real deployment.
MAX_FORWARDED_HOPS: Final = 32
#: An address that is not an IP (a garbage hop) is kept as the client's identity, cut here.
_MAX_ADDRESS_TEXT: Final = 64

#: Why a request was not authenticated (the ``reason`` label of the auth failure metric).
MISSING: Final = "missing"
UNKNOWN: Final = "unknown"
DISABLED: Final = "disabled"
EXPIRED: Final = "expired"

SCOPES: Final = frozenset({"read", "write", "files", "admin"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def key_digest(key: bytes) -> str:
    """The SHA-256 of a key, in lower-case hex (what ``key_sha256`` holds)."""
    return hashlib.sha256(key).hexdigest()


def required_scope(method: str, path: str) -> str:
    """The scope a request needs: ``files`` for the Files API, ``read`` to look
    (GET, HEAD), ``write`` for everything else (inference creates content; a Realtime
    session, although a GET, is inference)."""
    if path.startswith("/v1/files"):
        return "files"
    if method in ("GET", "HEAD") and path != REALTIME_PATH:
        return "read"
    return "write"


@final
class ModelPatterns:
    """Model names and globs (``gpt-4o*``, ``claude-?-*``); empty matches every model."""

    __slots__ = ("_exact", "_globs", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact = frozenset(p for p in self.patterns if not _is_glob(p))
        globs = [fnmatch.translate(p) for p in self.patterns if _is_glob(p)]
        self._globs = re.compile("|".join(f"(?:{g})" for g in globs)) if globs else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, model: str) -> bool:
        if not self.patterns or model in self._exact:
            return True
        return self._globs is not None and self._globs.match(model) is not None


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One client key, as the request path sees it (never the key itself)."""

    #: SHA-256 of the key, hex.
    digest: str
    #: The configured ``id``; ``""`` when none was given.
    id: str
    #: What logs and metrics show: the id, else the key's last 4 characters (``...abcd``),
    #: else (only the digest is known) ``sha256:`` and 8 digits of it.
    label: str
    name: str = ""
    user_id: str = ""
    organization_id: str = ""
    enabled: bool = True
    #: Seconds since the epoch after which the key is refused; ``None``: never.
    expires_at: float | None = None
    #: Empty: every scope.
    scopes: frozenset[str] = frozenset()
    models: ModelPatterns = field(default_factory=lambda: ModelPatterns(()))
    #: Requests per minute, tokens per minute, requests in flight (``None``: not set).
    rate_limit: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    @property
    def ident(self) -> str:
        """The key's name in limit counters, the same on every instance: its id, else its
        digest."""
        return self.id or self.digest

    def may(self, scope: str) -> bool:
        scopes = self.scopes
        return not scopes or scope in scopes or "admin" in scopes


def key_label(key_id: str, key: str, digest: str) -> str:
    """What logs show for a key: see :attr:`ApiKey.label`."""
    if key_id:
        return key_id
    if len(key) >= 8:
        return "..." + key[-4:]
    return "sha256:" + digest[:8]


@final
class KeyTable:
    """Every configured key by digest, and the keys recently presented by their bytes.

    The second dict saves the SHA-256 of a known key presented again (most requests): a
    dict probe on the presented bytes instead of hashing them. Only keys that were found
    enter it, so it holds at most one entry per configured key (and at most
    ``max_cached``: past that it starts again), and unknown keys cannot fill it. A hit is
    checked like a miss (disabled, expired) and an expired key leaves it. The probe
    compares the bytes only after their (keyed, per-process) hashes matched, so it tells
    an attacker nothing a digest lookup would not."""

    __slots__ = ("_keys", "_known", "max_cached")

    def __init__(self, keys: Iterable[ApiKey], max_cached: int = MAX_CACHED_KEYS) -> None:
        if max_cached < 1:
            raise ValueError(f"max_cached must be >= 1, got {max_cached}")
        self._keys = {key.digest: key for key in keys}
        self._known: dict[bytes, ApiKey] = {}
        self.max_cached = max_cached

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._keys.values())

    @property
    def cached(self) -> int:
        """Presented keys remembered now (at most ``max_cached``)."""
        return len(self._known)

    def lookup(self, presented: bytes | None, now: float | None = None
               ) -> tuple[ApiKey | None, str]:
        """``(key, "")`` for a usable key, else ``(None, reason)`` with the reason
        (:data:`MISSING`, :data:`UNKNOWN`, :data:`DISABLED`, :data:`EXPIRED`). ``now`` is
        seconds since the epoch, read here when not given and only for a key that
        expires (most do not)."""
        if not presented:
            return None, MISSING
        key = self._known.get(presented)
        if key is None:
            if len(presented) > MAX_KEY_LENGTH:
                return None, UNKNOWN
            key = self._keys.get(key_digest(presented))
            if key is None:
                return None, UNKNOWN
            if not key.enabled:
                return None, DISABLED
            if key.expires_at is None or (time.time() if now is None else now) < key.expires_at:
                known = self._known
                if len(known) >= self.max_cached:
                    known.clear()
                known[bytes(presented)] = key
                return key, ""
            return None, EXPIRED
        # Remembered: enabled when it was (an ApiKey does not change; a reload makes a new
        # table), so only its expiry can have come.
        if key.expires_at is not None and (time.time() if now is None else now
                                           ) >= key.expires_at:
            self._known.pop(presented, None)
            return None, EXPIRED
        return key, ""


# -- addresses ----------------------------------------------------------------------------


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """IPs and CIDRs (``10.0.0.0/8``, ``::1``) as networks (``ValueError`` on garbage)."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def parse_address(text: str) -> IPAddress | None:
    """An IP address as proxies write it (``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80``,
    ``::ffff:1.2.3.4`` as IPv4), or ``None``."""
    text = text.strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if text.startswith("["):
            host, _, port = text[1:].partition("]")
            port = port.removeprefix(":")
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        else:
            return None
        if not port.isdigit() and not (port == "" and text.endswith("]")):
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    if address is None:
        return False
    return any(address in network for network in networks)


@final
class ClientAddresses:
    """The client's address: the peer's, or — when the peer is a trusted proxy — the
    rightmost untrusted hop of ``X-Forwarded-For``, else ``X-Real-IP``, else (every hop
    trusted) the leftmost hop. Past :data:`MAX_FORWARDED_HOPS` hops the next one is taken
    as it is: a client cannot make the walk longer than that."""

    __slots__ = ("trusted",)

    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self.trusted = tuple(trusted)

    def resolve(
        self, peer: str, forwarded: Sequence[bytes] = (), real_ip: bytes | None = None
    ) -> tuple[str, IPAddress | None]:
        """The client's address as text (the identity its limits are counted under) and
        as an IP (``None`` when it is not one: a Unix socket's peer, a garbage hop)."""
        address = parse_address(peer) if peer else None
        if not self.trusted or not in_networks(address, self.trusted):
            return (str(address) if address is not None else peer), address
        hops = 0
        leftmost: tuple[str, IPAddress | None] | None = None
        for value in reversed(forwarded):  # several headers read as one comma-joined list
            for hop in reversed(value.split(b",")):
                text = _text_address(hop)
                if not text[0]:
                    continue
                hops += 1
                if hops > MAX_FORWARDED_HOPS or not in_networks(text[1], self.trusted):
                    return text
                leftmost = text
        if real_ip:
            text = _text_address(real_ip)
            if text[0]:
                return text
        if leftmost is not None:  # every hop is a trusted address: the first one sent it
            return leftmost
        return str(address), address


def _text_address(raw: bytes) -> tuple[str, IPAddress | None]:
    text = raw.decode("latin-1").strip()
    address = parse_address(text)
    if address is not None:
        return str(address), address
    return text[:_MAX_ADDRESS_TEXT], None


# -- CORS ---------------------------------------------------------------------------------


@final
class CorsPolicy:
    """Which browser origins may call, and the headers that tell the browser so.

    Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) are answered from here
    without authentication; actual requests get the allow-origin, credentials and expose
    headers. ``Vary: Origin`` goes with every answer whose headers depend on the origin.
    """

    __slots__ = ("_any", "_any_header", "_exact", "_headers", "_methods", "_patterns",
                 "_preflight_tail", "_response_tail", "credentials")

    def __init__(
        self,
        origins: Sequence[str],
        methods: Sequence[str],
        headers: Sequence[str],
        expose: Sequence[str],
        credentials: bool,
        max_age: float,
    ) -> None:
        self._any = "*" in origins
        self._exact = frozenset(o.lower() for o in origins if o != "*" and not _is_glob(o))
        globs = [fnmatch.translate(o.lower()) for o in origins if o != "*" and _is_glob(o)]
        self._patterns = re.compile("|".join(f"(?:{g})" for g in globs)) if globs else None
        self._methods = frozenset(m.upper() for m in methods)
        self._any_header = "*" in headers
        self._headers = frozenset(h.lower() for h in headers if h != "*")
        self.credentials = credentials
        tail = b""
        if credentials:
            tail += b"access-control-allow-credentials: true\r\n"
        self._response_tail = tail
        if expose:
            self._response_tail += (b"access-control-expose-headers: "
                                    + ", ".join(expose).encode("latin-1") + b"\r\n")
        self._preflight_tail = tail + (
            b"access-control-allow-methods: " + ", ".join(sorted(self._methods)).encode()
            + b"\r\naccess-control-max-age: %d\r\n" % int(max_age)
        )

    def allows(self, origin: bytes) -> bool:
        if self._any:
            return True
        text = origin.decode("latin-1").lower()
        if text in self._exact:
            return True
        return self._patterns is not None and self._patterns.fullmatch(text) is not None

    def _allow_origin(self, origin: bytes) -> bytes:
        # With credentials a browser refuses "*": the origin is echoed (and Vary says so).
        if self._any and not self.credentials:
            return b"access-control-allow-origin: *\r\nvary: origin\r\n"
        return b"access-control-allow-origin: " + origin + b"\r\nvary: origin\r\n"

    def response_head(self, origin: bytes) -> bytes:
        """Header lines for an actual request from ``origin`` (``b""`` when the origin is
        not allowed: the browser then keeps the answer from the page)."""
        if not self.allows(origin):
            return b"vary: origin\r\n"
        return self._allow_origin(origin) + self._response_tail

    def preflight(
        self, origin: bytes, method: bytes, requested_headers: bytes | None
    ) -> tuple[bytes | None, str]:
        """Header lines answering a preflight, or ``(None, why)`` when it is refused."""
        if not self.allows(origin):
            return None, "origin not allowed"
        if method.decode("latin-1").strip().upper() not in self._methods:
            return None, f"method {method.decode('latin-1')[:32]!r} not allowed"
        head = self._allow_origin(origin) + self._preflight_tail
        if requested_headers:
            asked = [h.strip().lower() for h in requested_headers.split(b",") if h.strip()]
            if not self._any_header:
                refused = [h for h in asked if h.decode("latin-1") not in self._headers]
                if refused:
                    return None, f"header {refused[0].decode('latin-1')[:64]!r} not allowed"
            if asked:
                head += b"access-control-allow-headers: " + b", ".join(asked) + b"\r\n"
        return head, ""
