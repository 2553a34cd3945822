# ruff: noqa: E501  (the template is YAML text; its comments are aligned, not wrapped)
"""The annotated sample configuration printed by ``generate_config()``.

Every key is listed with its default.  It loads as is (with no environment set): the two
backends use ``${VAR:-default}`` so they resolve without any variable.
"""

TEMPLATE = """\
# trio-continuum configuration (every key with its default).
# Durations: a number of seconds or a string like "30s", "500ms", "5m", "1h", "250us", "1m30s".
# Sizes: a number of bytes or a string like "512KB" (1000-based) or "10MiB" (1024-based).
# Any string may use ${VAR} or ${VAR:-default} to read the environment ($${ is a literal ${).

server:
  bind_address: "0.0.0.0:8080"      # "host:port", "[::1]:port" or "unix:/path"; a string or a list
  socket_mode: null                 # file mode for unix sockets, e.g. 0660 or "0o660"; null = umask
  workers: 1                        # worker processes sharing the port (SO_REUSEPORT); 0 = one per CPU
  connection_pool_size: 100         # max upstream connections per backend
  keepalive_timeout: 75s            # close an idle client keep-alive connection after this
  idle_park_after: 250ms            # an idle client connection then costs its socket only (no task); 0 = never
  max_request_body_size: 10MiB      # larger request bodies get 413
  max_upload_size: 100MiB           # multipart uploads (audio, image edits, files) are relayed as they arrive, up to this (else 413)
  max_header_size: 64KiB            # larger request heads get 431
  request_read_timeout: 30s         # a client must deliver a whole request within this (else 408)
  write_timeout: 60s                # a client that accepts no bytes of an answer for this long is disconnected
  shutdown_timeout: 30s             # graceful drain deadline on shutdown
  frontend: native                  # native (the router's own HTTP/1.1 server) | hypercorn (HTTP/2, h2c, HTTP/3; needs the hypercorn extra)
  http3: false                      # hypercorn front with tls: also serve HTTP/3 (QUIC, UDP) on the same ports; needs the http3 extra
  tls:                              # TLS for clients: on when cert_file is set (its files are re-read on every reload)
    cert_file: null                 # certificate chain (PEM)
    key_file: null                  # private key (PEM); null = in cert_file
    client_ca_file: null            # CA bundle (PEM): clients must present a certificate it signed (mutual TLS)
    min_version: "1.2"              # "1.2" | "1.3"

request:
  timeout: 60s                      # upstream deadline for a non-streaming request (504 after it)
  streaming_timeout: 30m            # upstream deadline for a streaming request
  idle_timeout: 10m                 # a stream's first-byte timeout (then another backend; request.timeout bounds it too) and longest gap between chunks (then an SSE error): long reasoning models think in silence
  max_retries: 2                    # retries on another backend for failures before the first byte

retry:
  max_attempts: null                # total attempts; when set it overrides request.max_retries (= max_attempts - 1)
  base_delay: 50ms                  # backoff before the first retry
  max_delay: 5s                     # backoff never exceeds this
  exponential_backoff: true         # double the delay on each retry
  jitter: true                      # randomise each delay in [delay/2, delay] so clients do not retry in lockstep
  max_retry_after: 10s              # honour an upstream Retry-After up to this long (longer: try another backend at once)

routing:
  strategy: RoundRobin              # RoundRobin | WeightedRoundRobin | LeastLatency | Random | ConsistentHash | LeastConnections
  fallback_strategy: RoundRobin     # used when the strategy cannot decide (e.g. no latency data yet)
  weights: {}                       # WeightedRoundRobin weights keyed by backend name or URL; overrides backends[].weight
  consistent_hash:
    key: header                     # header | user (the request body's "user") | api_key (the client's key)
    header: x-session-id            # the header read when key is header
    load_factor: 1.25               # bounded load: no backend takes more than 1.25x the mean in-flight share
    virtual_nodes: 160              # ring points per backend (times its weight)
  least_latency:
    alpha: 0.3                      # EWMA weight of the newest latency sample
    exploration: 0.05               # share of requests sent to non-best backends so recovered ones are noticed
    stale_after: 30s                # a latency sample older than this no longer counts

health_checks:
  enabled: true                     # probe backends and route only to healthy ones
  interval: 30s                     # time between probes of a backend
  timeout: 10s                      # deadline for one probe
  unhealthy_threshold: 3            # consecutive failures before a backend is marked unhealthy
  healthy_threshold: 2              # consecutive successes before it is healthy again
  endpoint: /v1/models              # path probed on each backend
  warmup_check_interval: 1s         # faster probing while a backend answers 503 (model loading)
  max_warmup_duration: 300s         # a backend warming up longer than this is marked unhealthy
  passive_failure_threshold: 3      # consecutive failed real requests that mark a backend down before the next probe (0: off)

circuit_breaker:
  enabled: true                     # stop sending to a failing backend for a while
  failure_threshold: 5              # consecutive failures that open the breaker
  failure_rate_threshold: 0.5       # ... or this failure rate over the window
  minimum_requests: 20              # ... once the window holds at least this many requests
  window: 30s                       # sliding window for the failure rate
  timeout: 30s                      # time open before trial requests are let through (half-open)
  half_open_max_requests: 3         # trial requests in half-open; all must succeed to close, one failure reopens

cache:
  model_cache_ttl: 300s             # how long the aggregated /v1/models list is cached
  deduplication:                    # (also accepted: top-level deduplication:, or cache.enable_deduplication / cache.deduplication_ttl)
    enabled: false                  # fold identical concurrent requests into one upstream call
    ttl: 60s                        # how long a deduplication result is kept
    include_nondeterministic: false # also share answers of sampling requests (temperature > 0 and no seed)

http_client:
  pool_idle_timeout: 90s            # close an idle upstream connection after this
  pool_max_idle_per_host: 100       # idle upstream connections kept per backend
  connect_timeout: 10s              # deadline for connecting (and the TLS handshake) to a backend
  prewarm_connections: 4            # connections opened (and probed) per backend at start-up
  max_response_header_size: 64KiB   # a larger upstream response head is a failed attempt (502 when none is left)
  tcp_keepalive_interval: 30s       # TCP keepalive on upstream sockets: first probe after this idle time, then every interval (3 probes); 0: off

logging:
  level: info                       # trace | debug | info | warn | warning | error | critical
  format: text                      # text | json
  access_log: true                  # one line per request on logger continuum.access (INFO); false: no cost at all

metrics:
  enabled: true                     # serve Prometheus metrics
  endpoint: /metrics                # path of the metrics endpoint
  auth:
    enabled: false                  # require HTTP basic auth on the metrics endpoint
    username: ""                    # basic auth user name
    password: ""                    # basic auth password (use ${VAR}; shown as *** by `check`)
  optional_metrics:
    enable_request_body_size: false   # http_request_size_bytes: request body sizes per endpoint
    enable_response_body_size: false  # http_response_size_bytes: answer body sizes per endpoint
  # bind_address: "127.0.0.1:9090"   # serve only the metrics endpoint on this host:port (then not on the main port)

tracing:
  enabled: false                    # W3C traceparent for every upstream call (a new trace if the client sent none); OpenTelemetry spans when opentelemetry-sdk is installed
  service_name: trio-continuum      # service.name of the spans
  exporter: console                 # console | otlp (needs opentelemetry-exporter-otlp-proto-http)
  endpoint: ""                      # OTLP/HTTP traces URL, e.g. http://localhost:4318/v1/traces; "" = the exporter's default

api_keys:
  mode: permissive                  # permissive: a valid key is recognised, any other request passes as anonymous; blocking: a listed, enabled key is required (else 401)
  api_keys: []                      # client keys; an entry looks like this:
  # - key: "${CONTINUUM_API_KEY}"   # the secret clients send as "Authorization: Bearer <key>" or "x-api-key: <key>"
  #   key_sha256: ""                # instead of key: its SHA-256 in hex (printf %s KEY | sha256sum), so no plain key sits in a file
  #   id: key-1                     # identifier used in logs, metrics and limits (never the key)
  #   name: "Production key"        # human-readable label
  #   enabled: true                 # false rejects the key (401)
  #   user_id: ""                   # owner (kept for logs and admin output)
  #   organization_id: ""           # owning organization
  #   scopes: []                    # read (GET /v1/...) | write (POST /v1/...) | files (/v1/files) | admin (all); empty = all
  #   models: []                    # models (or globs like "gpt-4o*") this key may use, after alias resolution; empty = all (else 403)
  #   rate_limit: null              # requests per minute for this key (a minute's worth at once); null = rate_limiting.limits
  #   tokens_per_minute: null       # tokens per minute (reserved from max_tokens, reconciled from usage); null = none
  #   max_concurrent: null          # requests of this key in flight at once (across instances with storage: redis)
  #   expires_at: null              # ISO 8601 time after which the key is rejected (401)
  api_keys_file: null               # a YAML file with more entries (a list, or {api_keys: [...]}), read at start; relative to this file

rate_limiting:
  enabled: true                     # master switch for every limit below and the keys' own limits
  storage: memory                   # memory (this process) | redis (shared by every instance: see redis below)
  limits:                           # each limit has four optional keys, shown here for per_client ({} = no limit):
    per_client: {}                  # each client: its valid API key, else its address; for example:
    #   requests_per_second: 10     # sustained request rate
    #   burst_capacity: 20          # requests at once from idle (default: one second's worth)
    #   tokens_per_minute: 100000   # tokens (reserved from max_tokens, reconciled from the answer's usage)
    #   max_concurrent: 8           # requests in flight at once
    per_api_key: {}                 # each valid API key, instead of per_client (a key's own rate_limit/tokens_per_minute/max_concurrent win)
    per_backend: {}                 # each backend, checked once routing chose it (a refused backend is skipped for another)
    per_model: {}                   # model name or glob -> limit, after alias resolution, e.g. {gpt-4o: {tokens_per_minute: 100000}}
    global: {}                      # every request together
  whitelist: []                     # client IPs or CIDRs never rate limited, e.g. ["10.0.0.0/8"]
  bypass_keys: []                   # API keys never rate limited: a key's id, or the key itself (shown as *** by `check`)
  trusted_proxies: []               # proxies whose X-Forwarded-For (rightmost untrusted hop) or X-Real-IP names the client
  default_token_reservation: 1024   # tokens reserved at admission when a request sets no max_tokens
  redis:
    url: "redis://127.0.0.1:6379/0" # redis://[user:password@]host:port/db, rediss:// for TLS, or unix:///path.sock (password shown as *** by `check`)
    key_prefix: "continuum:"        # prefix of every key the limits use
    timeout: 250ms                  # one admission's round trip; slower counts as Redis down
    connect_timeout: 1s             # connecting, TLS and AUTH included
    pool_size: 4                    # connections (concurrent calls are pipelined on them)
    on_error: allow                 # Redis down or slow: allow (fail open) | deny (503)
    ca_file: null                   # CA bundle (PEM) to verify a rediss:// server with
    tls_verify: true                # verify the rediss:// server's certificate and name

cors:
  enabled: false                    # answer browsers' preflights (without auth) and add CORS headers to answers
  allowed_origins: ["*"]            # "*", exact origins, or patterns such as "https://*.example.com", "http://localhost:*"
  allowed_methods: [GET, POST, OPTIONS]
  allowed_headers: ["*"]            # "*" allows whatever the preflight asks for
  expose_headers: [x-request-id, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, retry-after, x-continuum-backend, x-continuum-model]
  allow_credentials: false          # send Access-Control-Allow-Credentials (the origin is then echoed, never "*")
  max_age: 600s                     # how long a browser may cache a preflight answer

realtime:                           # the Realtime API relay: GET /v1/realtime?model=M WebSocket sessions
  enabled: true                     # false: /v1/realtime is not routed (404)
  max_message_size: 16MiB           # largest WebSocket message from either side (larger: closed with 1009 / 1011)
  message_queue_size: 1             # messages queued per hop before its socket is no longer read (backpressure)
  ping_interval: 20s                # keep-alive ping on each hop; 0 = none
  ping_timeout: 20s                 # a hop whose pong is this late is taken for dead
  connect_timeout: 10s              # upstream TCP, TLS and WebSocket handshake, per attempt (then another backend)
  close_timeout: 5s                 # closing both hops may take this long
  max_sessions: 0                   # sessions at once per process; past it 503; 0 = no limit

admin:                              # the admin API: /admin/config, /admin/backends, ... (docs/admin-api.md)
  bind_address: null                # a separate "host:port" for the admin API; null = the main port
  auth:
    method: none                    # none (loopback clients only) | bearer_token | basic | api_key
    token: ""                       # bearer_token: "Authorization: Bearer <token>"; api_key: "X-API-Key: <token>" (use ${VAR})
    username: ""                    # basic: the user name
    password: ""                    # basic: the password (use ${VAR}; shown as ***)

hot_reload:
  enabled: false                    # re-read the config file when it changes (SIGHUP and POST /admin/config/reload always work)
  debounce: 500ms                   # the file must be quiet this long before it is read

responses:                          # stored answers of bridged /v1/responses backends (previous_response_id, GET/DELETE /v1/responses/{id})
  store: memory                     # memory (per router process) | redis (shared by every router using the same server)
  ttl: 24h                          # a stored response is forgotten this long after it was made
  max_entries: 10000                # memory: at most this many responses (oldest evicted first)
  max_bytes: 64MiB                  # memory: at most this many bytes of them; also the largest one response stored (memory or redis)
  redis:
    url: "redis://127.0.0.1:6379/0" # store: redis: the server (redis://, rediss:// for TLS, unix://)
    key_prefix: "continuum:responses:"  # prefix of every key the store writes
    timeout: 1s                     # deadline of one Redis call

files:                              # the Files API (/v1/files) and file_id references in chat and Responses requests
  enabled: false                    # serve /v1/files and resolve file references
  storage: local                    # local: a directory (point it at shared storage, e.g. an NFS mount, to share files between routers)
  directory: ./data/files           # where files and their metadata are kept
  max_file_size: 100MiB             # one upload at most (413 past it); at most server.max_upload_size
  max_total_size: 10GiB             # all files together (413 for an upload past it)
  max_files: 10000                  # number of files kept at most
  ttl: 0s                           # files are deleted this long after upload; 0 = kept until deleted
  max_resolved_size: 50MiB          # bytes of files one request may reference (each is inlined into the request)

backends:                           # at least one; names must be unique
  - name: local                     # unique name (used in logs, metrics and routing.weights)
    type: vllm                      # openai | vllm | ollama | llamacpp | lmstudio | localai | anthropic | gemini | mock
    url: "${VLLM_URL:-http://127.0.0.1:8000}"   # base URL, http:// or https:// (not used by mock; anthropic and gemini have defaults)
    api_key: "${VLLM_API_KEY:-}"    # sent as "Authorization: Bearer <key>"; empty = none
    weight: 1                       # share of traffic under WeightedRoundRobin (>= 1)
    models: []                      # models served here; empty = discover from the backend's /v1/models
    headers: {}                     # extra headers sent upstream, e.g. {X-Team: llm}
    ca_file: null                   # extra CA bundle (PEM) to trust for an https url
    tls_verify: true                # verify the backend's TLS certificate
    http2: auto                     # auto (ALPN on https) | always | never
    anthropic_version: "2023-06-01" # anthropic-version header for type: anthropic
    gemini_api: native              # type: gemini: native (generateContent) | openai (Gemini's OpenAI-compatible endpoint)
    default_max_tokens: 4096        # max_tokens sent to Anthropic when the client sends none
    max_tokens_field: auto          # field for the token limit of a /v1/messages request translated to chat: auto (max_completion_tokens for type: openai, else max_tokens) | max_tokens | max_completion_tokens
    reasoning: auto                 # /v1/messages to an OpenAI-compatible backend: thinking -> reasoning_effort, thinking blocks -> reasoning_content: auto | send | drop
    thinking_conflict: drop         # type: anthropic, thinking that Anthropic would refuse (tool_choice required/named, a tool turn without its thinking blocks): drop (send without thinking) | reject (400)
    endpoints: null                 # the model-routed endpoints served here, e.g. [/v1/chat/completions, /v1/embeddings]; null = the defaults of its type
    responses: auto                 # /v1/responses: native (passed through) | bridge (onto chat completions) | auto (native for type openai)
    health_check: null              # per-backend overrides of health_checks, e.g. {endpoint: /health, interval: 10s, timeout: 2s, enabled: true}
    enabled: true                   # false: out of service (drained, not probed) but kept in the config
    max_in_flight: null             # requests in flight to this backend; null = server.connection_pool_size
    max_queue: 256                  # requests waiting for a slot; past it the backend is skipped (429 when all are full)
  - name: mock                      # an in-process fake backend: no network, no keys
    type: mock
    models: [demo-chat]
    mock:
      api: openai                   # which API the mock speaks: openai | anthropic | gemini
      latency: 0s                   # delay before the response head
      tokens_per_second: 0          # pace of streamed chunks; 0 = as fast as possible
      stream_chunks: 8              # content chunks per streamed answer
      failures: []                  # injected faults; an entry looks like this:
      # - kind: status              # status | reset | reset_mid_stream | hang | drip | malformed
      #   status: 500               # HTTP status for kind: status
      #   rate: 1.0                 # probability (0..1) that a request gets this fault

model_aliases: {}                   # client model name -> served model, e.g. {gpt-4: gpt-4o}
fallbacks: {}                       # model -> models to try in order when none of its backends can answer, e.g. {gpt-4o: [claude-sonnet, llama3]}
"""


def generate_config() -> str:
    """A complete, commented config with every key and its default."""
    return TEMPLATE
