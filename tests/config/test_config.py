"""Tests for the config schema and loader (continuum.config)."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from continuum.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_warnings,
    dump_effective_config,
    generate_config,
    load_config,
    parse_bind_address,
    parse_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]
#: The tuning guide's YAML blocks (keys and values only): users paste them as they are.
GUIDE = REPO / "tests" / "fixtures" / "guide"
BACKENDS = "\nbackends:\n  - name: b1\n    url: http://127.0.0.1:9001\n"


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(textwrap.dedent(text), source="test.yaml", env=env or {})


def load_with_backend(text: str, env: dict[str, str] | None = None) -> Config:
    return load(textwrap.dedent(text) + BACKENDS, env)


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return str(info.value)


def get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------
# The performance guide's YAML blocks
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guide_blocks() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8")
            for path in sorted(GUIDE.glob("*.yaml"))}


#: What each block must mean once loaded (file name → dotted key → value).
GUIDE_EXPECTATIONS: dict[str, dict[str, Any]] = {
    "01-high-throughput.yaml": {
        "server.bind_address": ("0.0.0.0:8080",),
        "server.connection_pool_size": 1000,
        "server.keepalive_timeout": 75.0,
        "request.timeout": 30.0,
        "request.max_retries": 1,
        "cache.model_cache_ttl": 900.0,
        "http_client.pool_idle_timeout": 90.0,
        "http_client.pool_max_idle_per_host": 100,
    },
    "02-low-latency.yaml": {
        "routing.strategy": "LeastLatency",
        "routing.fallback_strategy": "RoundRobin",
        "request.timeout": 10.0,
        "request.max_retries": 0,
        "cache.model_cache_ttl": 3600.0,
        "health_checks.interval": 10.0,
    },
    "03-low-memory.yaml": {
        "server.connection_pool_size": 10,
        "cache.model_cache_ttl": 60.0,
        "request.timeout": 30.0,
        "logging.level": "error",
    },
    "04-deduplication.yaml": {
        "cache.deduplication.enabled": True,
        "cache.deduplication.ttl": 60.0,
    },
    "05-connection-pool.yaml": {"server.connection_pool_size": 500},
    "06-timeouts.yaml": {"request.timeout": 30.0, "request.streaming_timeout": 300.0},
    "07-model-cache.yaml": {"cache.model_cache_ttl": 300.0},
    "08-routing-weights.yaml": {
        "routing.strategy": "LeastLatency",
        "routing.fallback_strategy": "RoundRobin",
        "routing.weights": {"http://backend1:11434": 3, "http://backend2:11434": 1},
    },
    "09-health-checks.yaml": {
        "health_checks.enabled": True,
        "health_checks.interval": 30.0,
        "health_checks.timeout": 5.0,
        "health_checks.unhealthy_threshold": 3,
        "health_checks.healthy_threshold": 2,
    },
    "10-cache-and-deduplication.yaml": {
        "cache.model_cache_ttl": 300.0,
        "cache.deduplication.enabled": True,
        "cache.deduplication.ttl": 60.0,
    },
    "11-server-and-http-client.yaml": {
        "server.connection_pool_size": 500,
        "http_client.pool_idle_timeout": 90.0,
        "http_client.pool_max_idle_per_host": 100,
    },
    "12-metrics-auth.yaml": {
        "metrics.enabled": True,
        "metrics.endpoint": "/metrics",
        "metrics.auth.enabled": True,
        "metrics.auth.username": "metrics",
        "metrics.auth.password": "secure_password",
    },
    "13-model-cache-short.yaml": {"cache.model_cache_ttl": 60.0},
    "14-connection-pool-large.yaml": {"server.connection_pool_size": 1000},
}


def test_guide_block_count(guide_blocks: dict[str, str]) -> None:
    assert len(guide_blocks) == 14
    assert sorted(guide_blocks) == sorted(GUIDE_EXPECTATIONS)


def test_guide_blocks_load_and_mean_what_the_guide_says(guide_blocks: dict[str, str]) -> None:
    for name, expected in GUIDE_EXPECTATIONS.items():
        cfg = load(guide_blocks[name] + BACKENDS)
        for dotted, value in expected.items():
            assert get(cfg, dotted) == value, (name, dotted)


# --------------------------------------------------------------------------------------
# configs/ and the generated template
# --------------------------------------------------------------------------------------

PROD_ENV = {"OPENAI_API_KEY": "sk-test-openai", "CONTINUUM_API_KEY": "ck-test-client"}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path, env=PROD_ENV)
    assert cfg.backends
    assert cfg.source == os.fspath(path)


def test_shipped_configs_exist() -> None:
    names = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert {
        "prod.yaml",
        "demo.yaml",
        "high-throughput.yaml",
        "low-latency.yaml",
        "low-memory.yaml",
    } <= names


def test_demo_config_needs_no_network_or_keys() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml", env={})
    assert cfg.server.bind_address == ("127.0.0.1:8080",)
    assert all(b.type == "mock" and b.url == "" for b in cfg.backends)
    assert len(cfg.backends) == 2
    models = [set(b.models) for b in cfg.backends]
    assert set.intersection(*models) and set.union(*models) != set.intersection(*models)
    assert cfg.health_checks.enabled


def test_prod_config_uses_env_and_needs_it() -> None:
    cfg = load_config(REPO / "configs" / "prod.yaml", env=PROD_ENV)
    assert cfg.api_keys.mode == "blocking"
    assert cfg.api_keys.api_keys[0].key == "ck-test-client"
    openai = next(b for b in cfg.backends if b.type == "openai")
    assert openai.api_key == "sk-test-openai"
    assert {b.type for b in cfg.backends} >= {"openai", "vllm", "ollama"}
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEY|CONTINUUM_API_KEY"):
        load_config(REPO / "configs" / "prod.yaml", env={})


def test_tuning_configs_load_without_env() -> None:
    for name in ("high-throughput.yaml", "low-latency.yaml", "low-memory.yaml"):
        load_config(REPO / "configs" / name, env={})
    assert (
        load_config(REPO / "configs" / "high-throughput.yaml", env={}).server.connection_pool_size
        == 1000
    )


def test_generate_config_round_trip() -> None:
    text = generate_config()
    cfg = parse_config(text, env={})
    defaults = Config()
    for section in (
        "server",
        "request",
        "routing",
        "health_checks",
        "cache",
        "http_client",
        "logging",
        "metrics",
        "api_keys",
        "rate_limiting",
        "cors",
    ):
        assert getattr(cfg, section) == getattr(defaults, section), section


def _all_field_names(tp: Any, seen: set[str]) -> None:
    info = msgspec.inspect.type_info(tp)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        seen.add(f.encode_name)
        t = f.type
        while isinstance(t, msgspec.inspect.Metadata | msgspec.inspect.VarTupleType):
            t = t.type if isinstance(t, msgspec.inspect.Metadata) else t.item_type
        if isinstance(t, msgspec.inspect.StructType):
            _all_field_names(t.cls, seen)


def test_generate_config_mentions_every_key() -> None:
    names: set[str] = set()
    _all_field_names(Config, names)
    names.discard("source")
    names.discard("file_entries")  # set by the loader from api_keys_file, never written
    text = generate_config()
    missing = [n for n in sorted(names) if not re.search(rf"^\s*(# *)?(- )?{n}:", text, re.M)]
    assert missing == []


# --------------------------------------------------------------------------------------
# Durations and sizes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("1m30s", 90.0),
        (0, 0.0),
    ],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "abc", "5 minutes", "-1s", "1d", "", True, -3, "s"])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_in_yaml() -> None:
    cfg = load_with_backend("request:\n  timeout: 500ms\n  streaming_timeout: 5m\n")
    assert cfg.request.timeout == 0.5
    assert cfg.request.streaming_timeout == 300.0
    err = error_of("request:\n  timeout: 30 sec\n" + BACKENDS)
    assert err.startswith("test.yaml: request.timeout: expected a duration")
    assert "'30 sec'" in err
    assert "request.timeout: expected a duration" in error_of("request:\n  timeout: 0\n" + BACKENDS)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1024, 1024),
        ("10MiB", 10 * 1024 * 1024),
        ("512KB", 512_000),
        ("1MB", 1_000_000),
        ("64KiB", 65536),
        ("100B", 100),
        ("1.5MiB", 1572864),
        ("2gb", 2_000_000_000),
    ],
)
def test_sizes(text: Any, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["10XB", "MiB", "-1", "1.5B", 1.5, True, "ten"])
def test_bad_sizes(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_sizes_in_yaml() -> None:
    cfg = load_with_backend("server:\n  max_request_body_size: 1MB\n  max_header_size: 8KiB\n")
    assert cfg.server.max_request_body_size == 1_000_000
    assert cfg.server.max_header_size == 8192
    assert "server.max_header_size: expected a size" in error_of(
        "server:\n  max_header_size: lots\n" + BACKENDS
    )


# --------------------------------------------------------------------------------------
# Environment substitution
# --------------------------------------------------------------------------------------


def test_env_substitution() -> None:
    cfg = load(
        """\
        server:
          bind_address: "${HOST:-127.0.0.1}:${PORT}"
          workers: ${WORKERS:-3}
        request:
          timeout: ${TIMEOUT:-45}
        backends:
          - name: b
            url: "http://${BACKEND_HOST}:8000/v1"
            api_key: "${KEY}"
            tls_verify: ${VERIFY:-false}
        """,
        env={"PORT": "9000", "BACKEND_HOST": "gpu1", "KEY": "sk-1", "TIMEOUT": ""},
    )
    assert cfg.server.bind_address == ("127.0.0.1:9000",)
    assert cfg.server.workers == 3
    assert cfg.request.timeout == 45.0  # empty var falls back to the default
    assert cfg.backends[0].url == "http://gpu1:8000/v1"
    assert cfg.backends[0].api_key == "sk-1"
    assert cfg.backends[0].tls_verify is False


def test_env_substitution_escape_and_empty_optional() -> None:
    cfg = load(
        """\
        backends:
          - name: b
            url: http://h:1
            api_key: "${NOPE:-}"
            headers: {X-Literal: "$${NOT_A_VAR} costs $5"}
        """
    )
    assert cfg.backends[0].api_key is None
    assert cfg.backends[0].headers == {"X-Literal": "${NOT_A_VAR} costs $5"}


def test_env_substitution_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTINUUM_TEST_URL", "http://example.test:1234")
    cfg = parse_config("backends:\n  - name: b\n    url: ${CONTINUUM_TEST_URL}\n")
    assert cfg.backends[0].url == "http://example.test:1234"


def test_missing_env_var() -> None:
    err = error_of("backends:\n  - name: b\n    url: http://h:1\n    api_key: ${OPENAI_KEY}\n")
    assert err.startswith("test.yaml: backends[0].api_key: environment variable OPENAI_KEY")
    assert "not set" in err
    assert "malformed" in error_of("backends:\n  - name: b\n    url: ${1X}\n")
    assert "unterminated" in error_of("backends:\n  - name: b\n    url: ${X\n")


def test_every_missing_env_var_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load(
            """\
            backends:
              - name: a
                url: ${A_URL}
                api_key: ${SHARED_KEY}
              - name: b
                url: http://h:1
                api_key: ${SHARED_KEY}
                headers: {X-Org: "${ORG:-none}", X-Team: "${TEAM}"}
            """
        )
    err = info.value
    assert err.source == "test.yaml" and err.path == ""
    assert str(err).splitlines() == [
        "test.yaml: 3 environment variables are not set (set them, or write ${NAME:-default} "
        "to give a default):",
        "  backends[0].url: A_URL",
        "  backends[0].api_key: SHARED_KEY",
        "  backends[1].api_key: SHARED_KEY",
        "  backends[1].headers.X-Team: TEAM",
    ]


def test_missing_env_var_comes_before_other_errors() -> None:
    # The environment is the usual culprit: it is reported even when other keys are wrong.
    err = error_of("server:\n  workers: lots\nbackends:\n  - name: a\n    url: ${NOPE}\n")
    assert "environment variable NOPE is not set" in err


def test_warnings_for_aliases_and_fallbacks_nobody_lists() -> None:
    cfg = load(
        """\
        model_aliases: {gpt-4: gpt-4o, fast: gpt-4o-mini, odd: nothing}
        fallbacks: {gpt-4o: [gpt-4o-mini, gone]}
        backends:
          - {name: a, url: "http://h:1", models: [gpt-4o]}
          - {name: b, url: "http://h:2", models: [gpt-4o-mini]}
        """
    )
    assert config_warnings(cfg) == [
        "model_aliases.odd: 'nothing' is not in any backend's configured models",
        "fallbacks.gpt-4o[1]: 'gone' is not in any backend's configured models",
    ]


def test_no_alias_warnings_while_some_backend_discovers_its_models() -> None:
    cfg = load(
        """\
        model_aliases: {odd: nothing}
        backends:
          - {name: a, url: "http://h:1", models: [gpt-4o]}
          - {name: vllm, url: "http://h:2"}
        """
    )
    assert config_warnings(cfg) == []  # vllm may list it: only the running router knows


def test_shipped_configs_have_no_warnings() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path, env=PROD_ENV)
        assert config_warnings(cfg) == [], path


# --------------------------------------------------------------------------------------
# Server addresses
# --------------------------------------------------------------------------------------


def test_bind_address_string_or_list() -> None:
    assert load_with_backend("server:\n  bind_address: 0.0.0.0:80\n").server.bind_address == (
        "0.0.0.0:80",
    )
    cfg = load_with_backend(
        "server:\n  bind_address: ['127.0.0.1:8080', '[::1]:8080', 'unix:/tmp/c.sock']\n"
        "  socket_mode: 0660\n"
    )
    assert cfg.server.bind_address == ("127.0.0.1:8080", "[::1]:8080", "unix:/tmp/c.sock")
    assert cfg.server.socket_mode == 0o660
    assert load_with_backend("server:\n  socket_mode: '0o600'\n").server.socket_mode == 0o600


def test_parse_bind_address() -> None:
    assert parse_bind_address("[::1]:8080") == ("tcp", "::1", 8080, "")
    assert parse_bind_address("localhost:0").port == 0
    assert parse_bind_address("unix:/run/x.sock").path == "/run/x.sock"
    assert str(parse_bind_address("[::]:80")) == "[::]:80"


@pytest.mark.parametrize(
    ("addr", "fragment"),
    [
        ("0.0.0.0:70000", "port must be"),
        ("0.0.0.0", "expected 'host:port'"),
        ("::1:8080", "brackets"),
        ("[::zz]:80", "not an IPv6 address"),
        ("unix:", "needs a path"),
        ("host:port", "port must be"),
    ],
)
def test_bad_bind_address(addr: str, fragment: str) -> None:
    err = error_of(f"server:\n  bind_address: {addr!r}\n" + BACKENDS)
    assert err.startswith("test.yaml: server.bind_address: ")
    assert fragment in err


def test_bad_bind_address_in_list_names_index() -> None:
    err = error_of("server:\n  bind_address: ['127.0.0.1:1', 'nope']\n" + BACKENDS)
    assert err.startswith("test.yaml: server.bind_address[1]: ")
    assert "duplicate" in error_of("server:\n  bind_address: ['a:1', 'a:1']\n" + BACKENDS)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_error_names_file_path_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  connection_pool_size: abc\n" + BACKENDS)
    with pytest.raises(ConfigError) as info:
        load_config(bad, env={})
    assert str(info.value) == (
        f"{bad}: server.connection_pool_size: expected an integer >= 1, got 'abc'"
    )
    assert info.value.path == "server.connection_pool_size"
    assert info.value.source == str(bad)


def test_unknown_key_suggestion() -> None:
    err = error_of("server:\n  conection_pool_size: 5\n" + BACKENDS)
    assert err == (
        "test.yaml: server.conection_pool_size: unknown key 'conection_pool_size' "
        "(did you mean 'connection_pool_size'?)"
    )
    assert "valid keys here" in error_of("zzqq: 1\n" + BACKENDS)
    assert "backends[0].modles" in error_of(
        "backends:\n  - name: b\n    url: http://h:1\n    modles: [x]\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  workers: true\n", "server.workers: expected an integer >= 0, got true"),
        ("routing:\n  strategy: Fastest\n", "routing.strategy: expected one of"),
        ("routing:\n  strategy: leastlatency\n", "did you mean 'LeastLatency'?"),
        ("routing:\n  weights: {a: 0}\n", "routing.weights.a: expected an integer >= 1, got 0"),
        ("health_checks:\n  enabled: maybe\n", "health_checks.enabled: expected true or false"),
        ("logging: info\n", "logging: expected a mapping, got 'info'"),
        ("metrics:\n  endpoint: metrics\n", "metrics.endpoint: expected a path starting"),
        ("metrics:\n  auth: {enabled: true}\n", "metrics.auth: enabled auth needs"),
        ("api_keys:\n  mode: blocking\n", "blocking mode needs at least one enabled key"),
        ("server:\n  socket_mode: 660\n", "server.socket_mode: expected a file mode"),
    ],
)
def test_wrong_types_and_values(text: str, expected: str) -> None:
    assert expected in error_of(text + BACKENDS)


def test_backend_errors() -> None:
    assert error_of("backends: []\n") == "test.yaml: backends: at least one backend is required"
    assert error_of("server: {}\n").endswith("backends: at least one backend is required")
    assert "backends[1].name: duplicate backend name 'a' (also used by backends[0])" in error_of(
        "backends:\n  - {name: a, url: 'http://x:1'}\n  - {name: a, url: 'http://y:1'}\n"
    )
    assert "backends[0]: missing required key 'name'" in error_of("backends:\n  - url: http://x\n")
    for url in ("ftp://h", "http://", "localhost:8000", "http://h:99999", "http://a b"):
        err = error_of(f"backends:\n  - {{name: a, url: '{url}'}}\n")
        assert "backends[0].url: expected an http:// or https:// URL" in err, url
    assert "a url is required" in error_of("backends:\n  - name: a\n")
    assert "backends[0].url: mock backends take no url" in error_of(
        "backends:\n  - {name: a, type: mock, url: 'http://x'}\n"
    )
    assert "backends[0].mock: only valid for type 'mock'" in error_of(
        "backends:\n  - {name: a, url: 'http://x', mock: {latency: 1s}}\n"
    )
    assert "backends[0].type: expected one of" in error_of(
        "backends:\n  - {name: a, url: 'http://x', type: bogus}\n"
    )
    assert "not a valid HTTP header name" in error_of(
        "backends:\n  - {name: a, url: 'http://x', headers: {'a b': c}}\n"
    )
    assert "backends[0].ca_file: file not found" in error_of(
        "backends:\n  - {name: a, url: 'https://x', ca_file: /nonexistent/ca.pem}\n"
    )
    assert "backends[0].mock.failures[0].rate: expected a number between 0 and 1" in error_of(
        "backends:\n  - {name: a, type: mock, mock: {failures: [{kind: status, rate: 2}]}}\n"
    )


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("server:\n  workers: 1\n  bind_address: [unclosed\nrequest:\n  timeout: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, env={})
    assert str(info.value).startswith(f"{bad}: line ")
    assert "invalid YAML" in str(info.value)
    dup = error_of("server:\n  workers: 1\n  workers: 2\n" + BACKENDS)
    assert dup.startswith("test.yaml: line 3, column 3: ") and "duplicate key 'workers'" in dup


def test_empty_and_non_mapping_documents(tmp_path: Path) -> None:
    assert "empty" in error_of("")
    assert "empty" in error_of("# only a comment\n")
    assert "top level, got a list" in error_of("- a\n- b\n")
    assert "top level, got a string" in error_of("hello\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------
# Aliases from the Rust router's documents
# --------------------------------------------------------------------------------------


def test_dedup_aliases() -> None:
    cfg = load_with_backend("deduplication:\n  enabled: true\n  ttl: 2m\n")
    assert cfg.cache.deduplication.enabled is True
    assert cfg.cache.deduplication.ttl == 120.0
    cfg = load_with_backend("cache:\n  enable_deduplication: true\n  deduplication_ttl: 30s\n")
    assert (cfg.cache.deduplication.enabled, cfg.cache.deduplication.ttl) == (True, 30.0)
    err = error_of("deduplication: {ttl: 5}\ncache:\n  deduplication_ttl: 6\n" + BACKENDS)
    assert "conflicts with cache.deduplication.ttl" in err


def test_selection_strategy_alias() -> None:
    cfg = load_with_backend("selection_strategy: WeightedRoundRobin\n")
    assert cfg.routing.strategy == "WeightedRoundRobin"
    err = error_of("selection_strategy: Random\nrouting: {strategy: Random}\n" + BACKENDS)
    assert err.startswith("test.yaml: selection_strategy: conflicts with routing.strategy")


def test_backend_weight_prefers_routing_weights() -> None:
    cfg = load(
        """\
        routing:
          weights: {"http://h1:1": 5, b2: 7}
        backends:
          - {name: b1, url: "http://h1:1", weight: 2}
          - {name: b2, url: "http://h2:1"}
          - {name: b3, url: "http://h3:1", weight: 4}
        """
    )
    assert [cfg.backend_weight(b) for b in cfg.backends] == [5, 7, 4]


def test_api_key_entries_keep_extra_fields() -> None:
    cfg = load_with_backend(
        """\
        api_keys:
          mode: blocking
          api_keys:
            - key: k1
              id: key-1
              user_id: u
              organization_id: o
              scopes: [read, write]
              rate_limit: 1000
              expires_at: 2025-12-31T23:59:59Z
        """
    )
    entry = cfg.api_keys.api_keys[0]
    assert entry.scopes == ("read", "write") and entry.rate_limit == 1000
    assert entry.expires_at is not None and entry.expires_at.startswith("2025-12-31")


def test_config_from_dict() -> None:
    cfg = config_from_dict({"backends": [{"name": "m", "type": "mock", "models": ["x"]}]})
    assert cfg.source == "<dict>" and cfg.backends[0].type == "mock"
    with pytest.raises(ConfigError, match=r"^<dict>: server\.workers: "):
        config_from_dict({"server": {"workers": "x"}, "backends": []})


# --------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------

SECRET = "sk-SUPER-SECRET-value"


def test_dump_masks_secrets() -> None:
    cfg = load(
        f"""\
        metrics:
          auth: {{enabled: true, username: metrics, password: "${{MPW}}"}}
        api_keys:
          mode: blocking
          api_keys:
            - key: "${{CK}}"
        backends:
          - name: a
            url: "https://user:{SECRET}@h.example"
            api_key: "${{OK}}"
            headers:
              Authorization: "Bearer {SECRET}"
              X-Api-Key: "{SECRET}"
              X-Session-Token: "{SECRET}"
              X-Team: visible-team
          - name: b
            url: http://h2:1
        """,
        env={"MPW": SECRET, "CK": SECRET + "2", "OK": SECRET + "3"},
    )
    dumped = dump_effective_config(cfg)
    assert SECRET not in dumped
    assert "visible-team" in dumped
    data = yaml.safe_load(dumped)
    assert data["backends"][0]["api_key"] == "***"
    assert data["backends"][1]["api_key"] is None
    assert data["api_keys"]["api_keys"][0]["key"] == "***"
    assert data["metrics"]["auth"]["password"] == "***"
    assert data["metrics"]["auth"]["username"] == "metrics"
    assert data["backends"][0]["headers"]["Authorization"] == "***"
    # the dump is itself a loadable config
    assert parse_config(dumped, env={}).server == cfg.server


def test_dump_shows_empty_secret_as_empty() -> None:
    data = yaml.safe_load(dump_effective_config(load_with_backend("metrics: {enabled: true}\n")))
    assert data["metrics"]["auth"]["password"] == ""


@pytest.mark.parametrize(
    "text",
    [
        "backends:\n  - {name: a, url: 'http://h', api_key: 123456789}\n",
        "backends:\n  - {name: a, url: 'http://h', api_key: [x]}\n",
        "backends:\n  - {name: a, url: 'http://h', headers: {Authorization: 123456789}}\n",
        "backends:\n  - {name: a, url: '${S}'}\n",
        "backends:\n  - {name: a, url: 'http://h', weight: '${S}'}\n",
        "server:\n  workers: '${S}'\n" + BACKENDS,
        "metrics:\n  auth: {password: 123456789}\n" + BACKENDS,
        "api_keys:\n  api_keys: [{key: 123456789}]\n" + BACKENDS,
    ],
)
def test_secrets_absent_from_errors(text: str) -> None:
    err = error_of(text, env={"S": SECRET})
    assert SECRET not in err and "123456789" not in err
    assert "hidden" in err or "expected" in err


def test_secret_not_in_duplicate_key_error() -> None:
    err = error_of(f"api_keys:\n  api_keys: [{{key: {SECRET}}}, {{key: {SECRET}}}]\n" + BACKENDS)
    assert "api_keys.api_keys[1].key: duplicate key" in err and SECRET not in err


# -- values that become upstream (or response) headers -------------------------------------------

_HEADER_CASES = {
    "api_key_crlf": ("api_key: \"k\\r\\nx-injected: 1\"", "backends[0].api_key", "CR, LF"),
    "api_key_lf": ("api_key: \"k\\n\"", "backends[0].api_key", "trailing newline"),
    "api_key_nul": ("api_key: \"k\\0\"", "backends[0].api_key", "NUL"),
    "api_key_not_latin1": ("api_key: \"k\u20ac\"", "backends[0].api_key", "latin-1"),
    "header_crlf": ("headers: {X-Team: \"a\\r\\nx-injected: 1\"}", "backends[0].headers.X-Team",
                    "CR, LF"),
    "header_not_latin1": ("headers: {X-Team: \"\u0441\u0438\u0441\"}",
                          "backends[0].headers.X-Team", "latin-1"),
    "header_del": ("headers: {X-Team: \"a\\x7f\"}", "backends[0].headers.X-Team", "control"),
    "anthropic_version": ("anthropic_version: \"1\\r\\nx: y\"", "backends[0].anthropic_version",
                          "CR, LF"),
    "probe_path_space": ("health_check: {endpoint: \"/health HTTP/1.1\"}",
                         "backends[0].health_check.endpoint", "without spaces"),
    "probe_path_crlf": ("health_check: {endpoint: \"/h\\r\\nx: y\"}",
                        "backends[0].health_check.endpoint", "without spaces"),
    "model_crlf": ("models: [\"m\\r\\nx: y\"]", "backends[0].models[0]", "control"),
}


@pytest.mark.parametrize("case", sorted(_HEADER_CASES))
def test_header_values_from_config_are_validated(case: str) -> None:
    line, path, fragment = _HEADER_CASES[case]
    err = error_of(f"backends:\n  - name: a\n    url: http://h\n    {line}\n")
    assert f"{path}: " in err and fragment in err, err


def test_header_values_from_the_environment_are_validated_and_hidden() -> None:
    err = error_of("backends:\n  - {name: a, url: 'http://h', api_key: '${KEY}'}\n",
                   env={"KEY": SECRET + "\n"})
    assert "backends[0].api_key: " in err and "CR, LF" in err
    assert SECRET not in err


def test_good_header_values_still_load() -> None:
    cfg = load("backends:\n  - name: a\n    url: http://h\n    api_key: \"sk-\u00e9t\u00e9\"\n"
               "    headers: {X-Tab: \"a\\tb\", X-Latin: \"caf\u00e9\"}\n")
    assert cfg.backends[0].api_key == "sk-\u00e9t\u00e9"
    assert cfg.backends[0].headers == {"X-Tab": "a\tb", "X-Latin": "caf\u00e9"}


def test_global_probe_path_and_urls_are_validated() -> None:
    assert "health_checks.endpoint: " in error_of(
        "health_checks: {endpoint: \"/a b\"}\n" + BACKENDS)
    for url in ("http://a..b", "http://h/\u00e4", "http://h/p\\0", "http://h\\x7f/"):
        err = error_of(f"backends:\n  - {{name: a, url: \"{url}\"}}\n")
        assert "backends[0].url: expected an http:// or https:// URL" in err, (url, err)
    assert load("backends:\n  - {name: a, url: 'http://\u00e4x.example/p%C3%A4'}\n")


def test_max_response_header_size() -> None:
    assert load_with_backend("").http_client.max_response_header_size == 65536
    cfg = load_with_backend("http_client:\n  max_response_header_size: 8KiB\n")
    assert cfg.http_client.max_response_header_size == 8192
    assert "http_client.max_response_header_size: expected a size" in error_of(
        "http_client:\n  max_response_header_size: 0\n" + BACKENDS)


@pytest.mark.parametrize("command", ["check", "run"])
def test_cli_refuses_header_injection_without_traceback(tmp_path: Path, command: str) -> None:
    """Both commands stop before anything binds, exit 2 and name the key; no traceback."""
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("server: {bind_address: '127.0.0.1:0'}\nhealth_checks: {enabled: false}\n"
                    "backends:\n  - name: a\n    url: http://127.0.0.1:9\n"
                    "    api_key: \"sk-\u20ac\"\n")
    result = subprocess.run([sys.executable, "-m", "continuum", command, str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "backends[0].api_key" in result.stderr and "latin-1" in result.stderr
    assert "Traceback" not in result.stderr and "sk-" not in result.stderr


def test_translation_keys_of_a_backend() -> None:
    """The agent-loop translation keys: their values load, anything else names the key."""
    cfg = parse_config(
        "backends:\n  - {name: a, url: 'http://x:1', max_tokens_field: max_completion_tokens,"
        " reasoning: send}\n  - {name: c, type: anthropic, thinking_conflict: reject}\n",
        source="test.yaml")
    backend, claude = cfg.backends
    assert (backend.max_tokens_field, backend.reasoning, claude.thinking_conflict) == (
        "max_completion_tokens", "send", "reject")
    default = parse_config("backends:\n  - {name: a, url: 'http://x:1'}\n", source="test.yaml")
    assert (default.backends[0].max_tokens_field, default.backends[0].reasoning,
            default.backends[0].thinking_conflict) == ("auto", "auto", "drop")
    for key, value in (("max_tokens_field", "max_output_tokens"), ("reasoning", "maybe"),
                       ("thinking_conflict", "ignore")):
        err = error_of(f"backends:\n  - {{name: a, url: 'http://x:1', {key}: {value}}}\n")
        assert f"backends[0].{key}: expected one of" in err, err
    # set where no translation reads them, they would be ignored: refused, naming the type
    for backend, key, value in (
            ("type: anthropic", "max_tokens_field", "max_tokens"),
            ("type: anthropic", "reasoning", "send"),
            ("type: gemini", "reasoning", "drop"),
            ("type: gemini, gemini_api: native", "max_tokens_field", "max_tokens"),
            ("type: openai, url: 'http://x:1'", "thinking_conflict", "reject"),
            ("type: gemini, gemini_api: openai", "thinking_conflict", "reject"),
            ("type: openai, url: 'http://x:1'", "gemini_api", "openai"),
            ("type: anthropic", "gemini_api", "openai")):
        err = error_of(f"backends:\n  - {{name: a, {backend}, {key}: {value}}}\n")
        assert f"backends[0].{key}: only valid for" in err, err
    for backend, key, value in (("type: gemini, gemini_api: openai", "reasoning", "send"),
                                ("type: vllm, url: 'http://x:1'", "max_tokens_field", "auto"),
                                ("type: anthropic", "thinking_conflict", "drop")):
        parse_config(f"backends:\n  - {{name: a, {backend}, {key}: {value}}}\n",
                     source="test.yaml")
