"""The access-control sections of the config: client keys (inline and ``api_keys_file``),
``rate_limiting`` and ``cors`` — what loads, what is refused with which key path, and that no
key or password shows in errors or in ``check``'s output."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
import yaml

from continuum.config import (
    Config,
    ConfigError,
    config_warnings,
    dump_effective_config,
    load_config,
    parse_config,
)

BACKENDS = "\nbackends:\n  - name: b1\n    url: http://127.0.0.1:9001\n"
SECRET = "sk-live-0123456789abcdef"
DIGEST = hashlib.sha256(SECRET.encode()).hexdigest()


def load(text: str, env: dict[str, str] | None = None, source: str = "test.yaml") -> Config:
    return parse_config(textwrap.dedent(text) + BACKENDS, source=source, env=env or {})


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return str(info.value)


# -- keys -------------------------------------------------------------------------------------


def test_key_entries_with_every_field() -> None:
    cfg = load(f"""\
        api_keys:
          mode: blocking
          api_keys:
            - key: {SECRET}
              id: key-1
              scopes: [read, write]
              models: ["gpt-4o*", claude-sonnet]
              rate_limit: 60
              tokens_per_minute: 10000
              max_concurrent: 4
              expires_at: 2030-01-01T00:00:00Z
            - key_sha256: {DIGEST.upper()[:-1]}0
              id: key-2
    """)
    first, second = cfg.api_keys.entries
    assert first.models == ("gpt-4o*", "claude-sonnet") and first.max_concurrent == 4
    assert first.tokens_per_minute == 10000 and first.rate_limit == 60
    assert second.key_sha256 == DIGEST[:-1] + "0"  # normalised to lower case


@pytest.mark.parametrize(
    ("entry", "where", "detail"),
    [
        ("{key: a, key_sha256: '" + "a" * 64 + "'}", "api_keys.api_keys[0]", "not both"),
        ("{id: x}", "api_keys.api_keys[0].key", "must not be empty"),
        ("{key_sha256: abc}", "api_keys.api_keys[0].key_sha256", "64 hexadecimal"),
        ("{key: 'two words'}", "api_keys.api_keys[0].key", "printable ASCII"),
        ("{key: k, scopes: [reed]}", "api_keys.api_keys[0].scopes[0]", "did you mean 'read'"),
        ("{key: k, rate_limit: 0}", "api_keys.api_keys[0].rate_limit", ">= 1"),
        ("{key: k, max_concurrent: -1}", "api_keys.api_keys[0].max_concurrent", ">= 1"),
        ("{key: k, models: ['']}", "api_keys.api_keys[0].models[0]", "must not be empty"),
        ("{key: k, expires_at: soon}", "api_keys.api_keys[0].expires_at", "ISO 8601"),
    ],
)
def test_bad_key_entries(entry: str, where: str, detail: str) -> None:
    err = error_of(f"api_keys:\n  api_keys: [{entry}]\n")
    assert f"test.yaml: {where}: " in err and detail in err, err


def test_the_same_key_twice_is_refused_whether_plain_or_hashed() -> None:
    err = error_of(f"api_keys:\n  api_keys: [{{key: {SECRET}}}, {{key_sha256: {DIGEST}}}]\n")
    assert "api_keys.api_keys[1].key_sha256: duplicate key (same as api_keys.api_keys[0])" in err
    assert SECRET not in err and DIGEST not in err


def test_api_keys_file(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text(textwrap.dedent("""\
        - key: ${TEAM_KEY}
          id: team-a
          models: [gpt-4o-mini]
        - key_sha256: DIGEST
          id: team-b
    """).replace("DIGEST", DIGEST))
    config = tmp_path / "router.yaml"
    config.write_text(textwrap.dedent("""\
        api_keys:
          mode: blocking
          api_keys_file: keys.yaml
          api_keys: [{key: inline-key, id: ops}]
    """) + BACKENDS)
    cfg = load_config(config, env={"TEAM_KEY": "team-a-secret"})
    assert [e.id for e in cfg.api_keys.entries] == ["ops", "team-a", "team-b"]
    assert cfg.api_keys.entries[1].key == "team-a-secret"
    # check's output names the file and never carries its entries (they are read again).
    dumped = dump_effective_config(cfg)
    assert "team-a-secret" not in dumped and DIGEST not in dumped
    assert yaml.safe_load(dumped)["api_keys"]["api_keys_file"] == "keys.yaml"
    # The mapping form works too.
    (tmp_path / "keys.yaml").write_text("api_keys:\n  - {key: other, id: team-c}\n")
    assert load_config(config).api_keys.entries[1].id == "team-c"


def test_api_keys_file_errors_name_the_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    config = tmp_path / "router.yaml"
    config.write_text(f"api_keys:\n  api_keys_file: {keys}\n  api_keys: [{{key: {SECRET}}}]\n"
                      + BACKENDS)
    with pytest.raises(ConfigError, match=r"api_keys\.api_keys_file: cannot read"):
        load_config(config)
    keys.write_text("- {key: x, scope: [read]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value).startswith(f"{keys}: api_keys[0].scope: unknown key 'scope'")
    keys.write_text(f"- {{key: {SECRET}}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    text = str(info.value)
    assert f"{keys}: api_keys[0].key: duplicate key (same as api_keys.api_keys[0])" in text
    assert SECRET not in text
    keys.write_text("just text\n")
    with pytest.raises(ConfigError, match="expected a list of API key entries"):
        load_config(config)
    keys.write_text("- {key: '${UNSET_KEY_VAR}'}\n")
    with pytest.raises(ConfigError, match="UNSET_KEY_VAR is not set"):
        load_config(config, env={})


def test_blocking_mode_counts_the_file_keys(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text("- {key: k1}\n")
    config = tmp_path / "router.yaml"
    config.write_text("api_keys: {mode: blocking, api_keys_file: keys.yaml}\n" + BACKENDS)
    assert load_config(config).api_keys.mode == "blocking"
    (tmp_path / "keys.yaml").write_text("- {key: k1, enabled: false}\n")
    with pytest.raises(ConfigError, match="blocking mode needs at least one enabled key"):
        load_config(config)


# -- rate limiting ----------------------------------------------------------------------------


def test_rate_limiting_section() -> None:
    cfg = load("""\
        rate_limiting:
          storage: redis
          limits:
            per_client: {requests_per_second: 10, burst_capacity: 20}
            per_api_key: {requests_per_second: 5}
            per_backend: {max_concurrent: 100}
            per_model: {"gpt-4o*": {tokens_per_minute: 100000}}
            global: {requests_per_second: 1000, burst_capacity: 2000}
          whitelist: ["10.0.0.0/8", "::1"]
          bypass_keys: [key-1]
          trusted_proxies: [127.0.0.1]
          redis:
            url: "rediss://:pw@redis.internal:6380/2"
            on_error: deny
            timeout: 100ms
    """)
    rl = cfg.rate_limiting
    assert rl.limits.global_.burst_capacity == 2000
    assert rl.limits.per_model["gpt-4o*"].tokens_per_minute == 100000
    assert rl.redis.timeout == pytest.approx(0.1) and rl.redis.on_error == "deny"
    dumped = dump_effective_config(cfg)
    assert "pw@" not in dumped and "rediss://:***@redis.internal:6380/2" in dumped
    assert yaml.safe_load(dumped)["rate_limiting"]["limits"]["global"]["burst_capacity"] == 2000
    assert parse_config(dumped, env={}).rate_limiting.limits == rl.limits


@pytest.mark.parametrize(
    ("section", "where", "detail"),
    [
        ("whitelist: [garbage]", "rate_limiting.whitelist[0]", "an IP address or a CIDR"),
        ("trusted_proxies: ['10.0.0.0/33']", "rate_limiting.trusted_proxies[0]", "CIDR"),
        ("trusted_proxies: ['10.0.0.1, 10.0.0.2']", "rate_limiting.trusted_proxies[0]", "CIDR"),
        ("limits: {per_client: {burst_capacity: 5}}",
         "rate_limiting.limits.per_client.burst_capacity", "needs requests_per_second"),
        ("limits: {global: {requests_per_second: 0}}",
         "rate_limiting.limits.global.requests_per_second", "> 0"),
        ("limits: {per_clinet: {}}", "rate_limiting.limits.per_clinet", "did you mean"),
        ("storage: postgres", "rate_limiting.storage", "'memory', 'redis'"),
        ("redis: {url: 'redis-cluster://a:1'}", "rate_limiting.redis.url", "Cluster"),
        ("redis: {url: 'redis://a:1,b:2'}", "rate_limiting.redis.url", "Cluster"),
        ("redis: {url: 'http://a'}", "rate_limiting.redis.url", "scheme must be"),
        ("redis: {url: 'redis://a/x'}", "rate_limiting.redis.url", "database"),
        ("redis: {on_error: ignore}", "rate_limiting.redis.on_error", "'allow', 'deny'"),
    ],
)
def test_bad_rate_limiting(section: str, where: str, detail: str) -> None:
    err = error_of("rate_limiting:\n  " + section + "\n")
    assert f"test.yaml: {where}: " in err and detail in err, err


def test_redis_password_never_in_errors() -> None:
    err = error_of("rate_limiting:\n  redis: {url: 'redis://:hunter2@h:99999/0'}\n")
    assert "hunter2" not in err and "rate_limiting.redis.url" in err


def test_bypass_keys_show_ids_and_hide_keys() -> None:
    cfg = load(f"""\
        api_keys:
          api_keys: [{{key: k1, id: ops}}]
        rate_limiting:
          bypass_keys: [ops, {SECRET}]
    """)
    shown = yaml.safe_load(dump_effective_config(cfg))["rate_limiting"]["bypass_keys"]
    assert shown == ["ops", "***"]


def test_limit_warnings() -> None:
    quiet = load("api_keys:\n  api_keys: [{key: k1}]\n")
    assert config_warnings(quiet) == []
    off = load("rate_limiting: {enabled: false}\n"
               "api_keys:\n  api_keys: [{key: k, rate_limit: 5}]\n")
    assert any("no limit is enforced" in w for w in config_warnings(off))
    workers = load("server: {workers: 4}\n"
                   "rate_limiting:\n  limits: {global: {max_concurrent: 9}}\n")
    assert any("each worker process counts on its own" in w for w in config_warnings(workers))
    shared = load("server: {workers: 4}\nrate_limiting:\n  storage: redis\n"
                  "  limits: {global: {max_concurrent: 9}}\n")
    assert config_warnings(shared) == []


# -- CORS -------------------------------------------------------------------------------------


def test_cors_section() -> None:
    cfg = load("""\
        cors:
          enabled: true
          allowed_origins: ["https://app.example.com", "https://*.example.org", "http://localhost:*"]
          allow_credentials: true
          max_age: 1h
    """)
    assert cfg.cors.max_age == 3600 and "x-request-id" in cfg.cors.expose_headers


@pytest.mark.parametrize(
    ("section", "where", "detail"),
    [
        ("allowed_origins: [example.com]", "cors.allowed_origins[0]", "expected '*' or an origin"),
        ("allowed_origins: ['https://a.com/path']", "cors.allowed_origins[0]", "no path"),
        ("allowed_methods: [post]", "cors.allowed_methods[0]", "capitals"),
        ("allowed_headers: ['bad header']", "cors.allowed_headers[0]", "header name"),
        ("expose_headers: ['x y']", "cors.expose_headers[0]", "header name"),
    ],
)
def test_bad_cors(section: str, where: str, detail: str) -> None:
    err = error_of("cors:\n  " + section + "\n")
    assert f"test.yaml: {where}: " in err and detail in err, err
