"""Changing a configuration (sans-IO): diffs by key path, merge patches, client documents,
secrets masked on the way out and restored on the way in, values carried over."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from continuum.config import (
    Config,
    ConfigError,
    canonical_patch,
    carry,
    config_from_dict,
    covered,
    diff_configs,
    dump_effective_config,
    editable_document,
    masked_builtins,
    merge_patch,
    parse_document,
    restore_secrets,
    summarize,
)

SECRETS = ("sk-alpha-secret", "hdr-secret", "pw-secret", "admin-token-secret", "client-key-1")


def base(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "backends": [
            {"name": "a", "url": "http://u:pw-secret@127.0.0.1:9001", "api_key": "sk-alpha-secret",
             "headers": {"X-Auth-Token": "hdr-secret", "X-Team": "llm"}, "models": ["m"]},
            {"name": "b", "url": "http://127.0.0.1:9002", "models": ["m"]},
        ],
        "admin": {"auth": {"method": "bearer_token", "token": "admin-token-secret"}},
        "api_keys": {"api_keys": [{"key": "client-key-1", "id": "k1"}]},
    }
    data.update(sections)
    return data


def load(data: dict[str, Any]) -> Config:
    return config_from_dict(data, source="<test>", env={})


def test_no_difference_is_no_change() -> None:
    assert diff_configs(load(base()), load(base())) == []
    assert summarize([]) == "no change"


def test_changes_are_named_by_key_path_and_backends_by_name() -> None:
    old = load(base())
    data = base(routing={"strategy": "LeastLatency"})
    data["backends"] = [
        {**data["backends"][1], "weight": 3},
        {"name": "c", "url": "http://127.0.0.1:9003", "models": ["m"]},
    ]
    changes = diff_configs(old, load(data))
    described = [c.describe() for c in changes]
    assert 'routing.strategy: "RoundRobin" -> "LeastLatency"' in described
    assert "backends.a: removed" in described
    assert "backends.b.weight: 1 -> 3" in described
    assert "backends.c: added" in described
    by_path = {c.path: c for c in changes}
    assert by_path["backends.b.weight"].keys == ("backends", "b", "weight")
    # a removed backend is shown masked, like everything else
    assert "sk-alpha-secret" not in json.dumps(by_path["backends.a"].old)


def test_a_new_order_of_the_same_backends_is_one_change() -> None:
    data = base()
    data["backends"] = list(reversed(data["backends"]))
    changes = diff_configs(load(base()), load(data))
    assert [(c.path, c.old, c.new) for c in changes] == [("backends", ["a", "b"], ["b", "a"])]


def test_a_changed_secret_is_reported_but_never_shown() -> None:
    data = base()
    data["backends"][0]["api_key"] = "sk-other-secret"
    data["admin"]["auth"]["token"] = "admin-token-other"
    changes = diff_configs(load(base()), load(data))
    text = summarize(changes) + json.dumps([msgspec.to_builtins(c) for c in changes])
    assert "backends.a.api_key: changed (secret)" in text
    assert "admin.auth.token: changed (secret)" in text
    for secret in (*SECRETS, "sk-other-secret", "admin-token-other"):
        assert secret not in text


def test_summary_is_bounded() -> None:
    data = base()
    data["backends"] = [*data["backends"],
                        *({"name": f"n{i}", "url": "http://127.0.0.1:1"} for i in range(10))]
    text = summarize(diff_configs(load(base()), load(data)))
    assert text.endswith("and 4 more") and text.count("added") == 6


def test_carry_keeps_the_old_value_of_one_field() -> None:
    old = load(base(server={"bind_address": "127.0.0.1:1", "workers": 2}))
    new = load(base(server={"bind_address": "127.0.0.1:2", "workers": 3},
                    routing={"strategy": "Random"}))
    kept = carry(new, old, ("server", "bind_address"))
    assert kept.server.bind_address == ("127.0.0.1:1",)
    assert kept.server.workers == 3 and kept.routing.strategy == "Random"
    assert carry(new, old, ("server",)).server == old.server
    assert covered(("server", "workers"), [("server",)])
    assert not covered(("server", "workers"), [("routing",), ("server", "bind_address")])


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge_patch(target, {"a": {"b": 2}}) == {"a": {"b": 2, "c": [1, 2]}, "d": 1}
    assert merge_patch(target, {"a": {"c": [3]}, "d": None}) == {"a": {"b": 1, "c": [3]}}
    assert merge_patch(target, {"e": {"f": 1}})["e"] == {"f": 1}
    assert target == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # untouched


def test_canonical_patch_moves_alias_keys_to_their_place() -> None:
    assert canonical_patch({"selection_strategy": "Random"}) == {"routing": {"strategy": "Random"}}
    assert canonical_patch({"cache": {"enable_deduplication": True}}) == {
        "cache": {"deduplication": {"enabled": True}}}
    merged = merge_patch(editable_document(load(base())),
                         canonical_patch({"selection_strategy": "Random"}))
    assert load(merged).routing.strategy == "Random"


def test_the_editable_document_validates_back_to_the_same_config() -> None:
    data = base()
    data["backends"][1]["headers"] = {"X-Literal": "$${NOT_A_VAR}"}
    config = load(data)
    assert config.backends[1].headers["X-Literal"] == "${NOT_A_VAR}"
    assert load(editable_document(config)) == config


def test_a_masked_document_comes_back_with_its_secrets() -> None:
    config = load(base())
    masked = masked_builtins(config)
    assert not any(s in json.dumps(masked) for s in SECRETS)
    assert masked["backends"][0]["url"] == "http://u:***@127.0.0.1:9001"
    masked["routing"]["strategy"] = "Random"
    again = load(restore_secrets(masked, config, "<test>"))
    assert again.backends == config.backends
    assert again.admin == config.admin and again.api_keys == config.api_keys
    assert again.routing.strategy == "Random"


def test_a_mask_with_nothing_to_stand_for_names_its_key_path() -> None:
    config = load(base())
    masked = masked_builtins(config)
    masked["backends"].append({"name": "new", "url": "http://127.0.0.1:1", "api_key": "***"})
    with pytest.raises(ConfigError) as err:
        restore_secrets(masked, config, "admin PUT")
    assert err.value.path == "backends[2].api_key"
    assert str(err.value).startswith("admin PUT: backends[2].api_key: ")
    masked = masked_builtins(config)
    masked["backends"][0]["url"] = "http://u:***@elsewhere:1"
    with pytest.raises(ConfigError, match="another URL") as err:
        restore_secrets(masked, config, "x")
    assert err.value.path == "backends[0].url"


def test_dump_effective_config_masks_the_admin_secrets() -> None:
    text = dump_effective_config(load(base()))
    assert not any(s in text for s in SECRETS)
    assert "token: '***'" in text


@pytest.mark.parametrize(("admin", "path"), [
    ({"auth": {"method": "bearer_token"}}, "admin.auth.token"),
    ({"auth": {"method": "api_key", "token": ""}}, "admin.auth.token"),
    ({"auth": {"method": "basic", "username": "u"}}, "admin.auth"),
    ({"auth": {"method": "basic", "username": "a:b", "password": "p"}}, "admin.auth.username"),
    ({"auth": {"method": "bearer"}}, "admin.auth.method"),
    ({"bind_address": "unix:/tmp/x.sock"}, "admin.bind_address"),
    ({"bind_adress": "127.0.0.1:1"}, "admin.bind_adress"),
])
def test_admin_section_is_validated_with_key_paths(admin: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(base(admin=admin))
    assert err.value.path == path


def test_hot_reload_section() -> None:
    config = load(base(hot_reload={"enabled": True, "debounce": "250ms"}))
    assert config.hot_reload.enabled and config.hot_reload.debounce == 0.25
    with pytest.raises(ConfigError) as err:
        load(base(hot_reload={"debounce": 0}))
    assert err.value.path == "hot_reload.debounce"


# -- documents from clients ---------------------------------------------------------------


def test_parse_document_json_and_yaml() -> None:
    assert parse_document(b'{"a": 1}', "application/json", "x") == {"a": 1}
    assert parse_document(b"a: 1\nb: [1, 2]\n", "application/yaml", "x") == {"a": 1, "b": [1, 2]}


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b"[1, 2]", "application/json", "expected a mapping"),
    (b"{", "application/json", "invalid JSON"),
    (b"\xff", "application/json", "not UTF-8"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "application/json", "nested deeper"),
    (b"a: " + b"[" * 40 + b"]" * 40, "application/yaml", "nested deeper"),
    (b"a: &x [1, 2]\nb: *x\n", "application/yaml", "anchors"),
    (b"b: *x\n", "application/yaml", "invalid YAML"),
    (b"a: 1\na: 2\n", "application/yaml", "duplicate key"),
    (b'{"a": "' + b"x" * (1024 * 1024) + b'"}', "application/json", "larger than"),
])
def test_parse_document_refuses_hostile_documents(body: bytes, content_type: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_document(body, content_type, "admin PUT")


def test_billion_laughs_is_refused_before_anything_walks_it() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    with pytest.raises(ConfigError, match=r"anchors|aliases"):
        parse_document("\n".join(lines).encode(), "application/yaml", "x")


def test_the_password_of_the_responses_redis_url_is_masked_and_comes_back() -> None:
    redis = {"store": "redis", "redis": {"url": "redis://:redis-pw-secret@127.0.0.1:6379/0"}}
    config = load(base(responses=redis))
    masked = masked_builtins(config)
    assert masked["responses"]["redis"]["url"] == "redis://:***@127.0.0.1:6379/0"
    assert "redis-pw-secret" not in dump_effective_config(config)
    assert load(restore_secrets(masked, config, "<test>")).responses == config.responses
    masked["responses"]["redis"]["url"] = "redis://:***@elsewhere:6379/0"
    with pytest.raises(ConfigError, match="another one") as err:
        restore_secrets(masked, config, "x")
    assert err.value.path == "responses.redis.url"
    changed = load(base(responses={**redis, "redis": {"url": "redis://:other@127.0.0.1/0"}}))
    assert "redis-pw-secret" not in summarize(diff_configs(config, changed))


def test_access_control_secrets_are_masked_and_come_back() -> None:
    digest = "ab" * 32
    config = load(base(
        api_keys={"api_keys": [{"key": "client-key-1", "id": "k1"},
                               {"key_sha256": digest, "id": "k2"}]},
        rate_limiting={"bypass_keys": ["k1", "sk-raw-bypass", "sk-raw-two"],
                       "redis": {"url": "redis://:rl-pw-secret@127.0.0.1:6379/0"}}))
    masked = masked_builtins(config)
    text = json.dumps(masked) + dump_effective_config(config)
    for secret in (*SECRETS, digest, "sk-raw-bypass", "sk-raw-two", "rl-pw-secret"):
        assert secret not in text, secret
    assert masked["rate_limiting"]["bypass_keys"] == ["k1", "***", "***"]
    again = load(restore_secrets(masked, config, "<test>"))
    assert again.api_keys == config.api_keys and again.rate_limiting == config.rate_limiting
    # the k-th *** is the k-th raw key; one more *** than there are raw keys stands for none
    masked["rate_limiting"]["bypass_keys"] = ["***", "sk-new", "***", "***"]
    with pytest.raises(ConfigError) as err:
        restore_secrets(masked, config, "x")
    assert err.value.path == "rate_limiting.bypass_keys[3]"
    masked["rate_limiting"]["bypass_keys"] = ["***", "sk-new"]
    assert load(restore_secrets(masked, config, "x")).rate_limiting.bypass_keys == (
        "sk-raw-bypass", "sk-new")
    masked["api_keys"]["api_keys"].append({"key_sha256": "***", "id": "k3"})
    with pytest.raises(ConfigError) as err:
        restore_secrets(masked, config, "x")
    assert err.value.path == "api_keys.api_keys[2].key_sha256"
