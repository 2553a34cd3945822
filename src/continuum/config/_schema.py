"""The configuration schema: frozen msgspec Structs, one per section, with their defaults
and bounds, and :class:`ConfigError`.

Durations, sizes, bind addresses and file modes carry their kind in ``msgspec.Meta.extra``,
so the validation walk (:mod:`._validation`) knows to parse ``"30s"`` or ``"10MiB"`` before
checking the bound.

Unlike the rest of the package, this module's annotations are evaluated as the classes are
made (no ``from __future__ import annotations``): msgspec then reads them as they are,
where postponed ones are strings it must evaluate one by one through ``typing`` when the
schema is first used (~300 of them: half of loading a config at start-up, ~7 ms here).
"""

from typing import Annotated, Final, Literal

import msgspec

from ..core.endpoints import EndpointPath
from ..core.strategies import StrategyName


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


# Field kinds, carried in msgspec.Meta.extra so the validation walk can see them.
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


class ServerTlsConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """TLS on the client side (``server.tls``): on when ``cert_file`` is set."""

    cert_file: str | None = None
    #: None: the key is in ``cert_file``.
    key_file: str | None = None
    #: A CA bundle (PEM): clients must present a certificate it signed (mutual TLS).
    client_ca_file: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ServerConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bind_address: BindAddresses = ("0.0.0.0:8080",)
    socket_mode: FileMode = None
    workers: NonNegInt = 1
    connection_pool_size: PosInt = 100
    keepalive_timeout: PositiveDuration = 75.0
    #: An idle client connection is parked (no task, no parser) after this; 0: never.
    idle_park_after: Duration = 0.25
    max_request_body_size: Size = 10485760
    max_upload_size: Size = 104857600
    max_header_size: Size = 65536
    request_read_timeout: PositiveDuration = 30.0
    write_timeout: PositiveDuration = 60.0
    shutdown_timeout: Duration = 30.0
    #: Who speaks HTTP to clients: the router's own HTTP/1.1 server, or hypercorn (HTTP/2,
    #: h2c, HTTP/3 with ``http3``) serving ``continuum.asgi``.
    frontend: Literal["native", "hypercorn"] = "native"
    tls: ServerTlsConfig = ServerTlsConfig()
    #: hypercorn front with TLS: also serve HTTP/3 (QUIC, UDP) on the same ports.
    http3: bool = False


class RequestConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    timeout: PositiveDuration = 60.0
    streaming_timeout: PositiveDuration = 1800.0
    idle_timeout: PositiveDuration = 600.0
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
    strategy: StrategyName = "RoundRobin"
    fallback_strategy: StrategyName = "RoundRobin"
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
    tcp_keepalive_interval: Duration = 30.0


class LoggingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["trace", "debug", "info", "warn", "warning", "error", "critical"] = "info"
    format: Literal["text", "json"] = "text"
    access_log: bool = True


class MetricsAuthConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    username: str = ""
    password: str = ""


class OptionalMetricsConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Series off by default (each costs a little per request when on)."""

    #: ``http_request_size_bytes``: the request body's size per method and endpoint.
    enable_request_body_size: bool = False
    #: ``http_response_size_bytes``: the answer body's size per method and endpoint.
    enable_response_body_size: bool = False


class MetricsConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    endpoint: str = "/metrics"
    auth: MetricsAuthConfig = MetricsAuthConfig()
    optional_metrics: OptionalMetricsConfig = OptionalMetricsConfig()
    #: A separate ``host:port`` that serves only the metrics endpoint; None: the main port.
    bind_address: str | None = None


class TracingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    service_name: str = "trio-continuum"
    exporter: Literal["console", "otlp"] = "console"
    endpoint: str = ""  # OTLP/HTTP traces URL; "" lets the exporter use its default


class RealtimeConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The Realtime API relay (``GET /v1/realtime`` WebSocket sessions)."""

    enabled: bool = True
    #: Largest WebSocket message from either side (base64 audio frames are large).
    max_message_size: Size = 16 * 1024 * 1024
    #: Messages queued per hop before its socket is no longer read (backpressure).
    message_queue_size: NonNegInt = 1
    #: Keep-alive ping period on each hop; 0 sends none.
    ping_interval: Duration = 20.0
    ping_timeout: PositiveDuration = 20.0
    #: Upstream TCP, TLS and WebSocket handshake, per attempt.
    connect_timeout: PositiveDuration = 10.0
    close_timeout: PositiveDuration = 5.0
    #: Sessions at once (per router process); 0 = no limit. Past it: 503.
    max_sessions: NonNegInt = 0


#: What a client key may do (see ``core.access.required_scope``): ``read`` (GET on /v1),
#: ``write`` (inference and other POSTs), ``files`` (the Files API), ``admin`` (every scope).
Scope = Literal["read", "write", "files", "admin"]


class ApiKeyEntry(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: The secret itself, or (``key_sha256``) its SHA-256 in hex: exactly one of the two.
    key: str = ""
    key_sha256: str = ""
    id: str = ""
    name: str = ""
    enabled: bool = True
    user_id: str = ""
    organization_id: str = ""
    #: Empty: every scope.
    scopes: tuple[Scope, ...] = ()
    #: Model names or globs (``gpt-4o*``) this key may use, matched after alias resolution;
    #: empty: every model.
    models: tuple[str, ...] = ()
    #: Requests per minute (a minute's worth at once, then evenly).
    rate_limit: PosInt | None = None
    tokens_per_minute: PosInt | None = None
    #: Requests of this key in flight at once (across instances with Redis).
    max_concurrent: PosInt | None = None
    expires_at: str | None = None


class ApiKeysConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: Literal["permissive", "blocking"] = "permissive"
    api_keys: tuple[ApiKeyEntry, ...] = ()
    #: A YAML file of more entries (a list, or a mapping with an ``api_keys`` list), read once
    #: at load time; a relative path is relative to the config file.
    api_keys_file: str | None = None
    #: The entries read from ``api_keys_file`` (set by the loader, never by a document).
    file_entries: tuple[ApiKeyEntry, ...] = ()

    @property
    def entries(self) -> tuple[ApiKeyEntry, ...]:
        """Every key: the inline ones, then those of ``api_keys_file``."""
        return self.api_keys + self.file_entries if self.file_entries else self.api_keys


class LimitConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One limit (every field optional; an empty one limits nothing)."""

    requests_per_second: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: Requests admitted at once from idle; default: one second's worth (at least 1).
    burst_capacity: Annotated[float, msgspec.Meta(ge=1)] | None = None
    #: Tokens per minute (reserved from max_tokens, reconciled from usage).
    tokens_per_minute: PosInt | None = None
    #: Requests in flight at once.
    max_concurrent: PosInt | None = None

    @property
    def empty(self) -> bool:
        return (self.requests_per_second is None and self.tokens_per_minute is None
                and self.max_concurrent is None)


class RateLimitsConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Each client: its API key when it sent a valid one, else its address.
    per_client: LimitConfig = LimitConfig()
    #: Each valid API key, instead of per_client (a key's own limits win over both).
    per_api_key: LimitConfig = LimitConfig()
    #: Each backend, checked once routing has chosen it.
    per_backend: LimitConfig = LimitConfig()
    #: Model name or glob (after alias resolution) -> its limit; the first match applies.
    per_model: dict[str, LimitConfig] = {}
    global_: LimitConfig = msgspec.field(default=LimitConfig(), name="global")


class RedisConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "continuum:"
    #: One admission's round trip, from the call to the complete reply.
    timeout: PositiveDuration = 0.25
    connect_timeout: PositiveDuration = 1.0
    pool_size: PosInt = 4
    #: When Redis is down or slower than ``timeout``: admit (fail open) or answer 503.
    on_error: Literal["allow", "deny"] = "allow"
    ca_file: str | None = None
    tls_verify: bool = True


class RateLimitingConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    storage: Literal["memory", "redis"] = "memory"
    limits: RateLimitsConfig = RateLimitsConfig()
    #: Client addresses (IPs or CIDRs) never rate limited.
    whitelist: tuple[str, ...] = ()
    #: API keys (by ``id``, or the keys themselves) never rate limited.
    bypass_keys: tuple[str, ...] = ()
    #: Proxies (IPs or CIDRs) whose X-Forwarded-For / X-Real-IP is believed.
    trusted_proxies: tuple[str, ...] = ()
    #: Tokens reserved at admission when the request sets no max_tokens.
    default_token_reservation: PosInt = 1024
    redis: RedisConfig = RedisConfig()


class CorsConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    #: Exact origins (``https://app.example.com``), ``*``, or patterns with ``*``
    #: (``https://*.example.com``, ``http://localhost:*``).
    allowed_origins: tuple[str, ...] = ("*",)
    allowed_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    #: Request headers a browser may send; ``*``: whatever the preflight asks for.
    allowed_headers: tuple[str, ...] = ("*",)
    #: Response headers a page's script may read.
    expose_headers: tuple[str, ...] = (
        "x-request-id",
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "retry-after",
        "x-continuum-backend", "x-continuum-model",
    )  # fmt: skip
    allow_credentials: bool = False
    #: How long a browser may cache a preflight answer.
    max_age: Duration = 600.0


class AdminAuthConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    method: Literal["none", "bearer_token", "basic", "api_key"] = "none"
    token: str = ""
    username: str = ""
    password: str = ""


class AdminConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: A separate ``host:port`` that serves the admin API; None: the main port.
    bind_address: str | None = None
    auth: AdminAuthConfig = AdminAuthConfig()


class HotReloadConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = False
    #: The config file must be quiet this long before it is read again.
    debounce: PositiveDuration = 0.5


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
    #: Translation choices for agent tool loops (docs/configuration.md, "Translation").
    max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    reasoning: Literal["auto", "send", "drop"] = "auto"
    thinking_conflict: Literal["drop", "reject"] = "drop"
    #: The model-routed endpoints this backend serves; None: the defaults of its type.
    endpoints: tuple[EndpointPath, ...] | None = None
    responses: Literal["auto", "native", "bridge"] = "auto"
    health_check: BackendHealthCheck | None = None
    #: False keeps the entry but takes the backend out of service (drained, not probed).
    enabled: bool = True
    max_in_flight: PosInt | None = None
    max_queue: NonNegInt = 256
    mock: MockConfig = MockConfig()


class ResponsesRedisConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "continuum:responses:"
    timeout: PositiveDuration = 1.0


class ResponsesConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Stored Responses API answers of bridged backends (``previous_response_id``)."""

    store: Literal["memory", "redis"] = "memory"
    ttl: PositiveDuration = 86400.0
    max_entries: PosInt = 10000
    max_bytes: Size = 67108864
    redis: ResponsesRedisConfig = ResponsesRedisConfig()


class FilesConfig(_Base, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The router's own Files API (``/v1/files``) and file references in requests."""

    enabled: bool = False
    storage: Literal["local"] = "local"
    directory: str = "./data/files"
    max_file_size: Size = 104857600
    max_total_size: Size = 10737418240
    max_files: PosInt = 10000
    ttl: Duration = 0.0
    #: Bytes of files one request may reference (each is inlined into the request).
    max_resolved_size: Size = 52428800


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
    admin: AdminConfig = AdminConfig()
    hot_reload: HotReloadConfig = HotReloadConfig()
    rate_limiting: RateLimitingConfig = RateLimitingConfig()
    cors: CorsConfig = CorsConfig()
    realtime: RealtimeConfig = RealtimeConfig()
    responses: ResponsesConfig = ResponsesConfig()
    files: FilesConfig = FilesConfig()
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
ALIASES: dict[type, dict[str, tuple[str, ...]]] = {
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
HIDDEN: dict[type, frozenset[str]] = {
    Config: frozenset({"source"}),
    ApiKeysConfig: frozenset({"file_entries"}),
}
