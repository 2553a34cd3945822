"""Configuration schema and loader.

YAML (PyYAML, safe loading) is read into frozen msgspec Structs.  Loading happens in
four steps, each of which reports problems as a :class:`ConfigError` naming the file, the
dotted key path and what was expected:

1. parse the YAML (syntax errors name the line; duplicate keys are rejected);
2. substitute ``${VAR}`` / ``${VAR:-default}`` in every string scalar;
3. walk the data along the schema: reject unknown keys (with a suggestion), fold the
   Rust router's alias keys into their canonical place, parse durations and sizes, and
   check every type and bound;
4. build the Structs with ``msgspec.convert`` and run the cross-field checks (URLs,
   unique names, header syntax, API keys, ...).

Secrets never reach an error message: values under secret-looking keys and every value
that came from an environment variable are described, never echoed.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import msgspec
import msgspec.inspect as mi
import yaml

# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class ConfigError(Exception):
    """An invalid configuration.

    ``str(err)`` reads ``<source>: <key.path>: <detail>`` (empty parts are left out), e.g.
    ``configs/bad.yaml: server.connection_pool_size: expected an integer >= 1, got 'abc'``.
    """

    def __init__(self, detail: str, *, source: str = "", path: str = "") -> None:
        self.detail = detail
        self.source = source
        self.path = path
        super().__init__(": ".join(p for p in (source, path, detail) if p))


# --------------------------------------------------------------------------------------
# Field kinds (carried in msgspec.Meta.extra so the walker can see them)
# --------------------------------------------------------------------------------------

_DURATION = {"kind": "duration"}
_SIZE = {"kind": "size"}

#: A duration in seconds; YAML may give a number (seconds) or a string like "30s".
Duration = Annotated[float, msgspec.Meta(ge=0, extra=_DURATION)]
PositiveDuration = Annotated[float, msgspec.Meta(gt=0, extra=_DURATION)]
#: A size in bytes; YAML may give an integer or a string like "10MiB".
Size = Annotated[int, msgspec.Meta(ge=1, extra=_SIZE)]
BindAddresses = Annotated[tuple[str, ...], msgspec.Meta(min_length=1, extra={"kind": "bind"})]
FileMode = Annotated[int | None, msgspec.Meta(extra={"kind": "filemode"})]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
HttpStatus = Annotated[int, msgspec.Meta(ge=100, le=599)]

Strategy = Literal[
    "RoundRobin",
    "WeightedRoundRobin",
    "LeastLatency",
    "Random",
    "ConsistentHash",
    "LeastConnections",
]
BackendType = Literal[
    "openai", "vllm", "ollama", "llamacpp", "lmstudio", "localai", "anthropic", "gemini", "mock"
]


#: Where a cloud backend lives when its ``url`` is left out.
DEFAULT_URLS: Final = {
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}


class _Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------


class ServerConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bind_address: BindAddresses = ("0.0.0.0:8080",)
    socket_mode: FileMode = None
    workers: NonNegInt = 1
    connection_pool_size: PosInt = 100
    keepalive_timeout: PositiveDuration = 75.0
    max_request_body_size: Size = 10485760
    max_header_size: Size = 65536
    request_read_timeout: PositiveDuration = 30.0
    write_timeout: PositiveDuration = 60.0
    shutdown_timeout: Duration = 30.0


class RequestConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    timeout: PositiveDuration = 60.0
    streaming_timeout: PositiveDuration = 300.0
    idle_timeout: PositiveDuration = 60.0
    max_retries: NonNegInt = 2


class RetryConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_attempts: PosInt | None = None
    base_delay: Duration = 0.05
    max_delay: Duration = 5.0
    exponential_backoff: bool = True
    jitter: bool = True
    max_retry_after: Duration = 10.0


class ConsistentHashConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: Literal["header", "user", "api_key"] = "header"
    header: str = "x-session-id"
    load_factor: Annotated[float, msgspec.Meta(ge=1.0)] = 1.25
    virtual_nodes: PosInt = 160


class LeastLatencyConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    alpha: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.3
    exploration: Probability = 0.05
    stale_after: PositiveDuration = 30.0


class RoutingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    strategy: Strategy = "RoundRobin"
    fallback_strategy: Strategy = "RoundRobin"
    weights: dict[str, PosInt] = {}
    consistent_hash: ConsistentHashConfig = ConsistentHashConfig()
    least_latency: LeastLatencyConfig = LeastLatencyConfig()


class HealthChecksConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    interval: PositiveDuration = 30.0
    timeout: PositiveDuration = 10.0
    unhealthy_threshold: PosInt = 3
    healthy_threshold: PosInt = 2
    endpoint: str = "/v1/models"
    warmup_check_interval: PositiveDuration = 1.0
    max_warmup_duration: Duration = 300.0
    passive_failure_threshold: NonNegInt = 3


class CircuitBreakerConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    failure_threshold: PosInt = 5
    failure_rate_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    minimum_requests: PosInt = 20
    window: PositiveDuration = 30.0
    timeout: PositiveDuration = 30.0
    half_open_max_requests: PosInt = 3


class DeduplicationConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    ttl: PositiveDuration = 60.0
    include_nondeterministic: bool = False


class CacheConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model_cache_ttl: Duration = 300.0
    deduplication: DeduplicationConfig = DeduplicationConfig()


class HttpClientConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pool_idle_timeout: PositiveDuration = 90.0
    pool_max_idle_per_host: NonNegInt = 100
    connect_timeout: PositiveDuration = 10.0
    prewarm_connections: NonNegInt = 4
    max_response_header_size: Size = 65536


class LoggingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["trace", "debug", "info", "warn", "warning", "error", "critical"] = "info"
    format: Literal["text", "json"] = "text"
    access_log: bool = True


class MetricsAuthConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    username: str = ""
    password: str = ""


class MetricsConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    endpoint: str = "/metrics"
    auth: MetricsAuthConfig = MetricsAuthConfig()
    #: A separate ``host:port`` that serves only the metrics endpoint; None: the main port.
    bind_address: str | None = None


class TracingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    service_name: str = "trio-continuum"
    exporter: Literal["console", "otlp"] = "console"
    endpoint: str = ""  # OTLP/HTTP traces URL; "" lets the exporter use its default


class ApiKeyEntry(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: str
    id: str = ""
    name: str = ""
    enabled: bool = True
    user_id: str = ""
    organization_id: str = ""
    scopes: tuple[str, ...] = ()
    rate_limit: NonNegInt | None = None
    expires_at: str | None = None


class ApiKeysConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["permissive", "blocking"] = "permissive"
    api_keys: tuple[ApiKeyEntry, ...] = ()


class MockFailure(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["status", "reset", "reset_mid_stream", "hang", "drip", "malformed"]
    status: HttpStatus = 500
    rate: Probability = 1.0


class MockConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    api: Literal["openai", "anthropic", "gemini"] = "openai"
    latency: Duration = 0.0
    tokens_per_second: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    stream_chunks: PosInt = 8
    failures: tuple[MockFailure, ...] = ()


class BackendHealthCheck(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool | None = None
    endpoint: str | None = None
    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None


class BackendConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    url: str = ""
    type: BackendType = "openai"
    api_key: str | None = None
    weight: PosInt = 1
    models: tuple[str, ...] = ()
    headers: dict[str, str] = {}
    ca_file: str | None = None
    tls_verify: bool = True
    http2: Literal["auto", "always", "never"] = "auto"
    anthropic_version: str = "2023-06-01"
    gemini_api: Literal["native", "openai"] = "native"
    default_max_tokens: PosInt = 4096
    health_check: BackendHealthCheck | None = None
    max_in_flight: PosInt | None = None
    max_queue: NonNegInt = 256
    mock: MockConfig = MockConfig()


class Config(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    server: ServerConfig = ServerConfig()
    request: RequestConfig = RequestConfig()
    retry: RetryConfig = RetryConfig()
    routing: RoutingConfig = RoutingConfig()
    health_checks: HealthChecksConfig = HealthChecksConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    cache: CacheConfig = CacheConfig()
    http_client: HttpClientConfig = HttpClientConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    api_keys: ApiKeysConfig = ApiKeysConfig()
    backends: tuple[BackendConfig, ...] = ()
    model_aliases: dict[str, str] = {}
    fallbacks: dict[str, tuple[str, ...]] = {}
    source: str = ""

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt: ``retry.max_attempts - 1`` when that is set."""
        attempts = self.retry.max_attempts
        return self.request.max_retries if attempts is None else attempts - 1

    def backend_weight(self, backend: BackendConfig) -> int:
        """The weight WeightedRoundRobin should use: ``routing.weights`` keyed by the
        backend's name or URL wins over ``backends[].weight``."""
        weights = self.routing.weights
        if backend.name in weights:
            return weights[backend.name]
        if backend.url and backend.url in weights:
            return weights[backend.url]
        if backend.url and backend.url.rstrip("/") in weights:
            return weights[backend.url.rstrip("/")]
        return backend.weight


# Keys of the Rust router's documents that we accept as aliases:
# struct -> {alias key: target field path inside that struct}.
_ALIASES: dict[type, dict[str, tuple[str, ...]]] = {
    Config: {
        "deduplication": ("cache", "deduplication"),
        "selection_strategy": ("routing", "strategy"),
    },
    CacheConfig: {
        "enable_deduplication": ("deduplication", "enabled"),
        "deduplication_ttl": ("deduplication", "ttl"),
    },
}
# Fields that exist on the Struct but may not be set from a config document.
_HIDDEN: dict[type, frozenset[str]] = {Config: frozenset({"source"})}


# --------------------------------------------------------------------------------------
# Durations, sizes, addresses
# --------------------------------------------------------------------------------------

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(us|µs|ms|s|m|h)")
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)?\s*")
_DURATION_HELP = "a duration (seconds, or a string like '30s', '500ms', '5m', '1h', '250us')"
_SIZE_HELP = "a size in bytes (an integer, or a string like '512KB', '10MiB')"


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"30s"``, ``"1.5s"``, ``"500ms"``, ``"5m"``,
    ``"1h"``, ``"250us"`` or a sum such as ``"1m30s"``.  Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if value < 0 or value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a duration")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not a duration")
    text = value.strip()
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError("not a duration")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"10MiB"``, ``"512KB"``, ``"1MB"``, ``"64B"``.
    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("not a size")
        return value
    if not isinstance(value, str):
        raise ValueError("not a size")
    m = _SIZE_RE.fullmatch(value)
    if m is None:
        raise ValueError("not a size")
    number, unit = m.group(1), (m.group(2) or "b").lower()
    if unit not in _SIZE_UNITS:
        raise ValueError("not a size")
    if unit == "b" and "." in number:
        raise ValueError("not a size")
    return int(float(number) * _SIZE_UNITS[unit])


class BindAddress(NamedTuple):
    """One parsed ``server.bind_address`` entry."""

    kind: Literal["tcp", "unix"]
    host: str = ""  # IPv6 without brackets
    port: int = 0
    path: str = ""  # unix socket path

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def parse_bind_address(text: str) -> BindAddress:
    """Parse ``"host:port"``, ``"[v6]:port"`` or ``"unix:/path"``; ValueError explains."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.strip():
            raise ValueError("a unix socket address needs a path, e.g. 'unix:/run/continuum.sock'")
        return BindAddress("unix", path=path)
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected '[ipv6]:port', e.g. '[::1]:8080'")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected 'host:port', '[ipv6]:port' or 'unix:/path'")
        if ":" in host:
            raise ValueError("IPv6 addresses need brackets, e.g. '[::1]:8080'")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a valid host name or IPv4 address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be an integer 0-65535, got {port_text!r}")
    return BindAddress("tcp", host=host, port=int(port_text))


# --------------------------------------------------------------------------------------
# Rendering values and paths for messages
# --------------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "credential")


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _last_key(path: str) -> str:
    m = re.search(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_-]*)$|\[(['\"])(.*)\2\]$", path)
    if m is None:
        return ""
    return m.group(1) or m.group(3) or ""


def _is_secret_name(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in _SECRET_WORDS)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


@dataclass
class _Ctx:
    source: str
    env: Mapping[str, str]
    # path -> the environment variables substituted into the value at that path
    substituted: dict[str, list[str]] = field(default_factory=dict)
    # (path, name) of every ${NAME} without a value or default: reported all at once
    missing: list[tuple[str, str]] = field(default_factory=list)

    def error(self, path: str, detail: str) -> ConfigError:
        return ConfigError(detail, source=self.source, path=path)

    def show(self, path: str, value: object) -> str:
        """Describe ``value`` for an error message, hiding anything secret."""
        if path in self.substituted:
            names = ", ".join("${" + n + "}" for n in self.substituted[path])
            return f"{_type_name(value)} from {names} (value hidden)"
        if isinstance(value, str | int | float) and _is_secret_name(_last_key(path)):
            return f"{_type_name(value)} (value hidden)"
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, str):
            return repr(value if len(value) <= 80 else value[:77] + "...")
        return _type_name(value)


# --------------------------------------------------------------------------------------
# Environment substitution
# --------------------------------------------------------------------------------------

_VAR_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _subst_str(text: str, path: str, ctx: _Ctx) -> tuple[str, list[str]]:
    if "$" not in text:
        return text, []
    out: list[str] = []
    names: list[str] = []
    i = 0
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        if text.startswith("$${", j):  # escape: $${X} is the literal text ${X}
            out.append("${")
            i = j + 3
        elif text.startswith("${", j):
            k = text.find("}", j + 2)
            if k < 0:
                raise ctx.error(path, "unterminated '${' (write $${ for a literal '${')")
            m = _VAR_REF.fullmatch(text[j + 2 : k])
            if m is None:
                raise ctx.error(
                    path, "malformed environment reference; expected ${NAME} or ${NAME:-default}"
                )
            name, default = m.group(1), m.group(2)
            value = ctx.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    ctx.missing.append((path, name))  # reported with the others, after
                    default = ""
                value = default
            out.append(value)
            names.append(name)
            i = k + 1
        else:
            out.append("$")
            i = j + 1
    return "".join(out), names


def _substitute(value: Any, path: str, ctx: _Ctx) -> Any:
    if isinstance(value, str):
        new, names = _subst_str(value, path, ctx)
        if names:
            ctx.substituted[path] = names
        return new
    if isinstance(value, list):
        return [_substitute(v, _join(path, i), ctx) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str):
                k, _ = _subst_str(k, _join(path, k), ctx)
            out[k] = _substitute(v, _join(path, k), ctx)
        return out
    return value


# --------------------------------------------------------------------------------------
# Schema walk: unknown keys, aliases, durations/sizes, types and bounds
# --------------------------------------------------------------------------------------


def _bounds(t: Any) -> str:
    ge, gt = getattr(t, "ge", None), getattr(t, "gt", None)
    le, lt = getattr(t, "le", None), getattr(t, "lt", None)
    if ge is not None and le is not None:
        return f" between {ge:g} and {le:g}"
    parts = []
    if ge is not None:
        parts.append(f">= {ge:g}")
    if gt is not None:
        parts.append(f"> {gt:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    return (" " + " and ".join(parts)) if parts else ""


def _describe(t: Any) -> str:
    kind = None
    if isinstance(t, mi.Metadata):
        kind = (t.extra or {}).get("kind")
        t = t.type
    if kind == "duration":
        return _DURATION_HELP + _bounds(t)
    if kind == "size":
        return _SIZE_HELP + _bounds(t)
    if kind == "bind":
        return "an address or a list of addresses ('host:port', '[::1]:port', 'unix:/path')"
    if kind == "filemode":
        return "a file mode such as 0o660 or '0660'"
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType):
        return "an integer" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "a number" + _bounds(t)
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in t.values)
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.UnionType):
        return " or ".join(_describe(x) for x in t.types)
    if isinstance(t, mi.VarTupleType):
        return "a list"
    if isinstance(t, mi.DictType | mi.StructType):
        return "a mapping"
    return "a valid value"


def _in_bounds(t: Any, v: float) -> bool:
    ge, gt = getattr(t, "ge", None), getattr(t, "gt", None)
    le, lt = getattr(t, "le", None), getattr(t, "lt", None)
    return not (
        (ge is not None and v < ge)
        or (gt is not None and v <= gt)
        or (le is not None and v > le)
        or (lt is not None and v >= lt)
    )


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce_env(value: str, t: Any) -> Any:
    """A substituted string aimed at a bool/int/float field is parsed as one."""
    text = value.strip()
    if isinstance(t, mi.BoolType):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    elif isinstance(t, mi.IntType):
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
    elif isinstance(t, mi.FloatType):
        try:
            return float(text)
        except ValueError:
            pass
    return value


def _check(value: Any, t: Any, path: str, ctx: _Ctx) -> Any:
    kind = None
    whole = t
    if isinstance(t, mi.Metadata):
        kind = (t.extra or {}).get("kind")
        t = t.type
    substituted = path in ctx.substituted

    def bad() -> ConfigError:
        return ctx.error(path, f"expected {_describe(whole)}, got {ctx.show(path, value)}")

    if kind == "duration":
        try:
            if substituted and isinstance(value, str):
                value = _coerce_env(value, mi.FloatType())
            seconds = parse_duration(value)
        except ValueError:
            raise bad() from None
        if not _in_bounds(t, seconds):
            raise bad()
        return seconds
    if kind == "size":
        try:
            size = parse_size(value)
        except ValueError:
            raise bad() from None
        if not _in_bounds(t, size):
            raise bad()
        return size
    if kind == "bind":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise bad()
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            ipath = _join(path, i) if not isinstance(value, str) else path
            if not isinstance(item, str):
                raise ctx.error(ipath, f"expected {_describe(whole)}, got {ctx.show(ipath, item)}")
            try:
                parsed = str(parse_bind_address(item))
            except ValueError as exc:
                raise ctx.error(ipath, f"{exc}; got {ctx.show(ipath, item)}") from None
            if parsed in seen:
                raise ctx.error(ipath, f"duplicate address (same as {_join(path, seen[parsed])})")
            seen[parsed] = i
        return list(items)
    if kind == "filemode":
        if value is None:
            return None
        mode: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            mode = value
        elif isinstance(value, str) and re.fullmatch(r"\s*(0o|0)?[0-7]{1,4}\s*", value):
            mode = int(value.strip().removeprefix("0o"), 8)
        if mode is None or not 0 <= mode <= 0o777:
            raise ctx.error(
                path,
                f"expected a file mode between 0o000 and 0o777 (YAML: 0660 or '0o660'), "
                f"got {ctx.show(path, value)}",
            )
        return mode

    if substituted and isinstance(value, str):
        value = _coerce_env(value, t)

    if isinstance(t, mi.StructType):
        return _check_struct(value, t, path, ctx)
    if isinstance(t, mi.AnyType):
        return value
    if isinstance(t, mi.UnionType):
        if value is None and any(isinstance(x, mi.NoneType) for x in t.types):
            return None
        if substituted and value == "" and any(isinstance(x, mi.NoneType) for x in t.types):
            return None
        others = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(others) == 1:
            try:
                return _check(value, others[0], path, ctx)
            except ConfigError:
                raise bad() from None
        raise bad()  # pragma: no cover - no such unions in the schema
    if isinstance(t, mi.NoneType):
        if value is not None:
            raise bad()
        return None
    if isinstance(t, mi.BoolType):
        if not isinstance(value, bool):
            raise bad()
        return value
    if isinstance(t, mi.IntType):
        if isinstance(value, bool) or not isinstance(value, int) or not _in_bounds(t, value):
            raise bad()
        return value
    if isinstance(t, mi.FloatType):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if value != value or not _in_bounds(t, value):
            raise bad()
        return float(value)
    if isinstance(t, mi.StrType):
        if isinstance(value, _dt.date | _dt.datetime):  # YAML timestamps: keep as text
            return value.isoformat()
        if not isinstance(value, str):
            raise bad()
        return value
    if isinstance(t, mi.LiteralType):
        if value not in t.values or isinstance(value, bool):
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [str(v) for v in t.values], n=1)
                if not close:
                    lowered = {str(v).lower(): str(v) for v in t.values}
                    close = [lowered[value.lower()]] if value.lower() in lowered else []
                if close:
                    raise ctx.error(
                        path,
                        f"expected {_describe(whole)}, got {ctx.show(path, value)} "
                        f"(did you mean {close[0]!r}?)",
                    )
            raise bad()
        return value
    if isinstance(t, mi.VarTupleType):
        if value is None:
            return []
        if not isinstance(value, list):
            raise bad()
        return [_check(v, t.item_type, _join(path, i), ctx) for i, v in enumerate(value)]
    if isinstance(t, mi.DictType):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad()
        out: dict[str, Any] = {}
        for k, v in value.items():
            kpath = _join(path, k)
            if not isinstance(k, str):
                raise ctx.error(kpath, f"keys must be strings, got {_type_name(k)}")
            out[k] = _check(v, t.value_type, kpath, ctx)
        return out
    raise bad()  # pragma: no cover


def _field_type(st: mi.StructType, names: tuple[str, ...]) -> Any:
    t: Any = st
    for name in names:
        t = t.type if isinstance(t, mi.Metadata) else t
        t = next(f.type for f in t.fields if f.name == name)
    return t


def _merge(
    out: dict[str, Any], target: tuple[str, ...], value: Any, origin: str, path: str, ctx: _Ctx
) -> None:
    node = out
    for name in target[:-1]:
        node = node.setdefault(name, {})
    leaf = target[-1]
    canonical = ".".join(p for p in (path, *target) if p)
    if leaf not in node:
        node[leaf] = value
        return
    if isinstance(node[leaf], dict) and isinstance(value, dict):
        clash = sorted(set(node[leaf]) & set(value))
        if not clash:
            node[leaf].update(value)
            return
        canonical = f"{canonical}.{clash[0]}"
    raise ctx.error(origin, f"conflicts with {canonical}; set it in one place only")


def _check_struct(value: Any, st: mi.StructType, path: str, ctx: _Ctx) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a mapping, got {ctx.show(path, value)}")
    hidden = _HIDDEN.get(st.cls, frozenset())
    fields = {f.name: f for f in st.fields if f.name not in hidden}
    aliases = _ALIASES.get(st.cls, {})
    out: dict[str, Any] = {}
    pending: list[tuple[tuple[str, ...], Any, str]] = []
    for key, item in value.items():
        kpath = _join(path, key)
        if not isinstance(key, str):
            raise ctx.error(kpath, f"keys must be strings, got {_type_name(key)}")
        if key in fields:
            out[key] = _check(item, fields[key].type, kpath, ctx)
        elif key in aliases:
            target = aliases[key]
            pending.append((target, _check(item, _field_type(st, target), kpath, ctx), kpath))
        else:
            known = sorted([*fields, *aliases])
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if close:
                detail = f"unknown key {key!r} (did you mean {close[0]!r}?)"
            else:
                detail = f"unknown key {key!r}; valid keys here: {', '.join(known)}"
            raise ctx.error(kpath, detail)
    for target, converted, origin in pending:
        _merge(out, target, converted, origin, path, ctx)
    for f in st.fields:
        if f.required and f.name not in out:
            raise ctx.error(path or "<top level>", f"missing required key {f.name!r}")
    return out


# --------------------------------------------------------------------------------------
# Cross-field checks
# --------------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Characters no header value or request line may carry: C0 controls but HTAB, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_header_value(value: str, path: str, ctx: _Ctx) -> None:
    """A value the router sends upstream as (part of) a header: one line of latin-1, or a
    CR/LF would split it into headers of its own (and a non-latin-1 one cannot be sent)."""
    if _CONTROL.search(value):
        raise ctx.error(path, "header values must not contain CR, LF, NUL or other control "
                              "characters (a trailing newline from a file or variable?)")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ctx.error(path, "header values must be latin-1 text (no other characters can "
                              "be sent in an HTTP/1.1 header)") from None


def _check_path(value: str, path: str, ctx: _Ctx) -> None:
    """A path the router puts in an upstream request line."""
    if not value.startswith("/"):
        raise ctx.error(path, f"expected a path starting with '/', got {ctx.show(path, value)}")
    if not value.isascii() or _CONTROL.search(value) or any(c.isspace() for c in value):
        raise ctx.error(path, "expected a path of printable ASCII without spaces "
                              "(percent-encode other characters)")


def _check_url(url: str, path: str, ctx: _Ctx) -> None:
    expected = "expected an http:// or https:// URL with a host, e.g. 'http://localhost:8000'"
    if not url:
        raise ctx.error(path, f"{expected}; a url is required unless type is 'mock'")
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port <= 65535
    except ValueError:
        raise ctx.error(path, f"{expected}, got {ctx.show(path, url)}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or any(c.isspace() for c in url)
        or _CONTROL.search(url)
        or parts.fragment
    ):
        raise ctx.error(path, f"{expected}, got {ctx.show(path, _mask_url(url))}")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ctx.error(path, f"{expected}; its host name is not valid, got "
                              f"{ctx.show(path, _mask_url(url))}") from None
    if not parts.path.isascii():
        raise ctx.error(path, f"{expected}; percent-encode non-ASCII characters in its path, "
                              f"got {ctx.show(path, _mask_url(url))}")


def _check_semantics(cfg: Config, ctx: _Ctx) -> Config:
    _check_path(cfg.health_checks.endpoint, "health_checks.endpoint", ctx)
    endpoint = cfg.metrics.endpoint
    if not endpoint.startswith("/"):
        p = "metrics.endpoint"
        raise ctx.error(p, f"expected a path starting with '/', got {ctx.show(p, endpoint)}")
    auth = cfg.metrics.auth
    if auth.enabled and (not auth.username or not auth.password):
        raise ctx.error("metrics.auth", "enabled auth needs a non-empty username and password")
    address = cfg.metrics.bind_address
    if address is not None:
        p = "metrics.bind_address"
        try:
            parsed = parse_bind_address(address)
        except ValueError as exc:
            raise ctx.error(p, f"{exc}; got {ctx.show(p, address)}") from None
        if parsed.kind != "tcp":
            raise ctx.error(p, f"expected 'host:port', got {ctx.show(p, address)}")
    endpoint = cfg.tracing.endpoint
    if endpoint:
        _check_url(endpoint, "tracing.endpoint", ctx)

    keys_seen: dict[str, int] = {}
    ids_seen: dict[str, int] = {}
    for i, entry in enumerate(cfg.api_keys.api_keys):
        p = f"api_keys.api_keys[{i}]"
        if not entry.key:
            raise ctx.error(f"{p}.key", "must not be empty")
        if entry.key in keys_seen:
            raise ctx.error(
                f"{p}.key", f"duplicate key (same as api_keys.api_keys[{keys_seen[entry.key]}].key)"
            )
        keys_seen[entry.key] = i
        if entry.id:
            if entry.id in ids_seen:
                raise ctx.error(
                    f"{p}.id",
                    f"duplicate id {entry.id!r} (also used by "
                    f"api_keys.api_keys[{ids_seen[entry.id]}])",
                )
            ids_seen[entry.id] = i
        if entry.expires_at is not None:
            try:
                _dt.datetime.fromisoformat(entry.expires_at)
            except ValueError:
                raise ctx.error(
                    f"{p}.expires_at",
                    f"expected an ISO 8601 time such as '2025-12-31T23:59:59Z', "
                    f"got {ctx.show(f'{p}.expires_at', entry.expires_at)}",
                ) from None
    if cfg.api_keys.mode == "blocking" and not any(k.enabled for k in cfg.api_keys.api_keys):
        raise ctx.error("api_keys.api_keys", "blocking mode needs at least one enabled key")

    if not cfg.backends:
        raise ctx.error("backends", "at least one backend is required")
    names: dict[str, int] = {}
    backends = []
    for i, b in enumerate(cfg.backends):
        p = f"backends[{i}]"
        if not b.name.strip():
            raise ctx.error(f"{p}.name", "must not be empty")
        if b.name in names:
            raise ctx.error(
                f"{p}.name",
                f"duplicate backend name {b.name!r} (also used by backends[{names[b.name]}])",
            )
        names[b.name] = i
        if _CONTROL.search(b.name):  # it becomes the x-continuum-backend header
            raise ctx.error(f"{p}.name", "must not contain control characters")
        if b.type == "mock":
            if b.url:
                raise ctx.error(
                    f"{p}.url", "mock backends take no url (the router serves them in-process)"
                )
        else:
            if not b.url and b.type in DEFAULT_URLS:
                b = msgspec.structs.replace(b, url=DEFAULT_URLS[b.type])
            _check_url(b.url, f"{p}.url", ctx)
            if b.mock != MockConfig():
                raise ctx.error(
                    f"{p}.mock", f"only valid for type 'mock' (this backend's type is {b.type!r})"
                )
        for j, model in enumerate(b.models):
            if not model.strip():
                raise ctx.error(f"{p}.models[{j}]", "model names must not be empty")
            if _CONTROL.search(model):  # it becomes the x-continuum-model header
                raise ctx.error(f"{p}.models[{j}]", "must not contain control characters")
        for hname, hvalue in b.headers.items():
            hp = _join(f"{p}.headers", hname)
            if not _HEADER_NAME.fullmatch(hname):
                raise ctx.error(hp, "not a valid HTTP header name")
            _check_header_value(hvalue, hp, ctx)
        if b.api_key is not None:
            _check_header_value(b.api_key, f"{p}.api_key", ctx)
        _check_header_value(b.anthropic_version, f"{p}.anthropic_version", ctx)
        if b.ca_file is not None and not Path(b.ca_file).is_file():
            raise ctx.error(f"{p}.ca_file", f"file not found: {b.ca_file!r}")
        if b.api_key == "":
            b = msgspec.structs.replace(b, api_key=None)
        hc = b.health_check
        if hc is not None and hc.endpoint is not None:
            _check_path(hc.endpoint, f"{p}.health_check.endpoint", ctx)
        backends.append(b)
    for key in cfg.routing.weights:
        if not key:
            raise ctx.error("routing.weights", "keys must be backend names or URLs")
    if cfg.routing.consistent_hash.key == "header" and not _HEADER_NAME.fullmatch(
        cfg.routing.consistent_hash.header
    ):
        raise ctx.error("routing.consistent_hash.header", "not a valid HTTP header name")
    for alias, target in cfg.model_aliases.items():
        p = _join("model_aliases", alias)
        if not alias or not target:
            raise ctx.error(p, "aliases and their targets must be non-empty model names")
        if target in cfg.model_aliases:
            raise ctx.error(p, f"{target!r} is itself an alias; point at a served model")
    for model, chain in cfg.fallbacks.items():
        p = _join("fallbacks", model)
        if not chain:
            raise ctx.error(p, "expected a non-empty list of models to try in order")
        if model in chain:
            raise ctx.error(p, f"a model cannot fall back to itself ({model!r})")
        if len(set(chain)) != len(chain):
            raise ctx.error(p, "the list names a model twice")
    return msgspec.structs.replace(cfg, backends=tuple(backends))


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = "invalid YAML: " + "; ".join(str(p) for p in (exc.context, exc.problem) if p)
        err = ConfigError(detail, source=source, path=where)
        err.line = mark.line + 1 if mark else None  # type: ignore[attr-defined]
        return err
    return ConfigError(f"invalid YAML: {type(exc).__name__}", source=source)


_TYPE_INFO: list[mi.StructType] = []


def _config_type() -> mi.StructType:
    if not _TYPE_INFO:
        info = mi.type_info(Config)
        assert isinstance(info, mi.StructType)
        _TYPE_INFO.append(info)
    return _TYPE_INFO[0]


def config_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed document (``${VAR}`` references are substituted)."""
    ctx = _Ctx(source=source, env=os.environ if env is None else env)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"expected a mapping of sections at the top level, got {_type_name(data)}",
            source=source,
        )
    substituted = _substitute(dict(data), "", ctx)
    if ctx.missing:
        raise _missing_env_error(ctx)
    checked = _check_struct(substituted, _config_type(), "", ctx)
    checked["source"] = source
    try:
        cfg = msgspec.convert(checked, Config)
    except msgspec.ValidationError as exc:  # a backstop: the walk above should catch all
        raise _translate(exc, ctx) from None
    return _check_semantics(cfg, ctx)


def _missing_env_error(ctx: _Ctx) -> ConfigError:
    """Every unset variable at once, each with its key path: a deploy that lacks three
    secrets should learn it in one run, not three."""
    if len(ctx.missing) == 1:
        path, name = ctx.missing[0]
        return ctx.error(path, f"environment variable {name} is not set "
                               f"(set it, or write ${{{name}:-default}} to give a default)")
    lines = "".join(f"\n  {path}: {name}" for path, name in ctx.missing)
    names = len(dict.fromkeys(name for _, name in ctx.missing))
    return ConfigError(f"{names} environment variables are not set (set them, or write "
                       f"${{NAME:-default}} to give a default):{lines}", source=ctx.source)


def _translate(exc: msgspec.ValidationError, ctx: _Ctx) -> ConfigError:
    text = str(exc)
    m = re.search(r" - at `\$(.*)`$", text)
    path = (m.group(1) if m else "").lstrip(".")
    detail = text[: m.start()] if m else text
    detail = re.sub(r", got `[^`]*`", "", detail)  # never echo values
    return ctx.error(path, detail[:1].lower() + detail[1:])


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate a YAML document."""
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    if data is None:
        raise ConfigError(
            "the configuration is empty (at least 'backends' is required)", source=source
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of sections at the top level, got {_type_name(data)}",
            source=source,
        )
    return config_from_dict(data, source=source, env=env)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute, validate and return the config at ``path``."""
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config file: {exc.strerror or exc}", source=source
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte offset {exc.start})", source=source) from None
    return parse_config(text, source=source, env=env)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

_MASK = "***"


def _mask(value: str | None) -> str | None:
    if value is None:
        return None
    return _MASK if value else ""


def _mask_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:{_MASK}@{parts.hostname or ''}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


def dump_effective_config(config: Config) -> str:
    """YAML of the effective configuration with every secret shown as ``***``."""
    data = msgspec.to_builtins(config)
    source = data.pop("source", "")
    for b in data["backends"]:
        b["api_key"] = _mask(b["api_key"])
        b["url"] = _mask_url(b["url"])
        b["headers"] = {k: (_mask(v) if _is_secret_name(k) else v) for k, v in b["headers"].items()}
    for entry in data["api_keys"]["api_keys"]:
        entry["key"] = _mask(entry["key"])
    auth = data["metrics"]["auth"]
    auth["password"] = _mask(auth["password"])
    head = f"# effective configuration (from {source})\n" if source else ""
    return head + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def config_warnings(config: Config) -> list[str]:
    """What is valid but probably a mistake, each with its key path: today, aliases and
    fallbacks naming a model no backend lists in its ``models``.

    Backends without ``models`` discover theirs at start, which a config alone cannot know:
    a model is only reported when every backend has a static list (the router checks the
    discovered lists again once it has started).
    """
    if any(not b.models for b in config.backends):
        return []
    served = {m for b in config.backends for m in b.models}
    return unserved_model_warnings(config, served, "any backend's configured models")


def unserved_model_warnings(config: Config, served: set[str], where: str) -> list[str]:
    """``model_aliases`` targets and ``fallbacks`` entries not in ``served``."""
    warnings = []
    for alias, target in config.model_aliases.items():
        if target not in served:
            warnings.append(f"{_join('model_aliases', alias)}: {target!r} is not in {where}")
    for model, chain in config.fallbacks.items():
        for i, fallback in enumerate(chain):
            if fallback not in served:
                path = f"{_join('fallbacks', model)}[{i}]"
                warnings.append(f"{path}: {fallback!r} is not in {where}")
    return warnings


def generate_config() -> str:
    """A complete, commented config with every key and its default."""
    from ._template import TEMPLATE

    return TEMPLATE
