"""TOML configs: a ``.toml`` file loads like its YAML twin, TOML written by the router loads
back as the same config, and TOML's own problems (syntax, no null, nesting) are clear
errors, never a traceback."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path
from typing import Any

import msgspec.inspect as mi
import pytest

from continuum.config import (
    Config,
    ConfigError,
    config_search_path,
    dump_effective_config,
    generate_config,
    load_config,
    masked_builtins,
    parse_config,
    parse_document,
)

REPO = Path(__file__).resolve().parents[2]
#: What configs/prod.yaml needs from the environment.
PROD_ENV = {"OPENAI_API_KEY": "sk-prod-secret", "CONTINUUM_API_KEY": "client-secret"}

TOML = """\
[server]
bind_address = "127.0.0.1:0"
request_read_timeout = "2s"

[routing]
strategy = "RoundRobin"

[[backends]]
name = "a"
url = "http://127.0.0.1:9001"
api_key = "${BACKEND_KEY}"
models = ["m1", "m2"]
weight = 2

[[backends]]
name = "b"
url = "http://127.0.0.1:9002"
models = ["m1"]
"""

YAML = """\
server:
  bind_address: 127.0.0.1:0
  request_read_timeout: 2s
routing:
  strategy: RoundRobin
backends:
  - {name: a, url: "http://127.0.0.1:9001", api_key: "${BACKEND_KEY}", models: [m1, m2],
     weight: 2}
  - {name: b, url: "http://127.0.0.1:9002", models: [m1]}
"""

ENV = {"BACKEND_KEY": "sk-backend"}


def same(a: Config, b: Config) -> bool:
    return masked_builtins(a) == masked_builtins(b)


def test_a_toml_file_loads_like_its_yaml_twin(tmp_path: Path) -> None:
    (tmp_path / "router.toml").write_text(TOML)
    (tmp_path / "router.yaml").write_text(YAML)
    from_toml = load_config(tmp_path / "router.toml", env=ENV)
    from_yaml = load_config(tmp_path / "router.yaml", env=ENV)
    assert same(from_toml, from_yaml)
    assert from_toml.backends[0].api_key == "sk-backend"  # ${VAR} works in TOML strings
    assert from_toml.server.request_read_timeout == 2.0  # units as in YAML
    assert from_toml.source == str(tmp_path / "router.toml")
    # The suffix decides, whatever its case; parse_config takes the syntax by name.
    (tmp_path / "ROUTER.TOML").write_text(TOML)
    assert same(load_config(tmp_path / "ROUTER.TOML", env=ENV), from_yaml)
    assert same(parse_config(TOML, env=ENV, syntax="toml"), from_yaml)


@pytest.mark.parametrize("name", ["demo", "prod", "high-throughput", "low-latency",
                                  "low-memory", "generated"])
def test_toml_written_by_the_router_loads_back_as_the_same_config(
    tmp_path: Path, name: str
) -> None:
    if name == "generated":
        config = parse_config(generate_config(), env={})
    else:
        config = load_config(REPO / "configs" / f"{name}.yaml", env=PROD_ENV)
    text = dump_effective_config(config, "toml")
    assert "sk-prod-secret" not in text and "client-secret" not in text
    tomllib.loads(text)  # valid TOML, comment head included
    path = tmp_path / "effective.toml"
    path.write_text(text)
    again = load_config(path, env=PROD_ENV)
    assert masked_builtins(again) == masked_builtins(config)
    # And from TOML to YAML and back: the two renderings agree.
    assert dump_effective_config(again).splitlines()[1:] == \
        dump_effective_config(config).splitlines()[1:]


def _nullable_fields_without_null_default(info: Any, path: str, seen: set[type]) -> list[str]:
    found: list[str] = []
    if isinstance(info, mi.UnionType):
        for member in info.types:
            found += _nullable_fields_without_null_default(member, path, seen)
    elif isinstance(info, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        found += _nullable_fields_without_null_default(info.item_type, path + "[]", seen)
    elif isinstance(info, mi.DictType):
        found += _nullable_fields_without_null_default(info.value_type, path + ".*", seen)
    elif isinstance(info, mi.StructType) and info.cls not in seen:
        seen.add(info.cls)
        for field in info.fields:
            members = info_members(field.type)
            if any(isinstance(m, mi.NoneType) for m in members) and (
                    field.default is not None or field.default_factory is not mi.NODEFAULT):
                found.append(f"{path}.{field.name}")
            found += _nullable_fields_without_null_default(field.type, f"{path}.{field.name}",
                                                           seen)
    return found


def info_members(info: Any) -> tuple[Any, ...]:
    return tuple(info.types) if isinstance(info, mi.UnionType) else (info,)


def test_every_nullable_field_defaults_to_null() -> None:
    """TOML has no null: a written document leaves null values out, which is only the same
    config if every field that may be null defaults to null."""
    assert _nullable_fields_without_null_default(mi.type_info(Config), "", set()) == []


def test_api_keys_file_in_toml(tmp_path: Path) -> None:
    (tmp_path / "keys.toml").write_text(textwrap.dedent("""\
        [[api_keys]]
        key = "${TEAM_KEY}"
        id = "team-a"

        [[api_keys]]
        key = "other-key"
        id = "team-b"
    """))
    config = tmp_path / "router.toml"
    config.write_text('[api_keys]\nmode = "blocking"\napi_keys_file = "keys.toml"\n' + TOML)
    cfg = load_config(config, env={**ENV, "TEAM_KEY": "team-a-secret"})
    assert [e.id for e in cfg.api_keys.entries] == ["team-a", "team-b"]
    assert cfg.api_keys.entries[0].key == "team-a-secret"
    (tmp_path / "keys.toml").write_text('[[api_keys]]\nkey = "x"\nscope = ["read"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(config, env=ENV)
    assert str(info.value).startswith(f"{tmp_path / 'keys.toml'}: api_keys[0].scope: "
                                      "unknown key 'scope'")
    (tmp_path / "keys.toml").write_text("api_keys = [\n  { key = }\n]\n")
    with pytest.raises(ConfigError, match=r"keys\.toml: invalid TOML: .*line 2"):
        load_config(config, env=ENV)


@pytest.mark.parametrize(("text", "message"), [
    ("[server\n", r"invalid TOML: .*\(at line 1"),
    ('a = 1\na = 2\n', r"invalid TOML: .*line 2"),  # TOML forbids a key twice
    ("", r"the configuration is empty"),
    ('[server]\nbind_adress = "x"\n', r"server\.bind_adress: unknown key 'bind_adress' "
                                      r"\(did you mean 'bind_address'\?\)"),
    ("[server]\nkeepalive_timeout = 1979-05-27\n", r"server\.keepalive_timeout: "),
    ("[[backends]]\nname = 'a'\nurl = 'http://u:pw-secret@127.0.0.1:1'\nweight = 'x'\n",
     r"backends\[0\]\.weight: "),
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", r"invalid TOML|unknown key"),
])
def test_toml_problems_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, env={})
    assert str(info.value).startswith(str(path))
    assert "pw-secret" not in str(info.value)


def test_toml_documents_from_clients_are_bounded() -> None:
    patch = parse_document(b'[routing]\nstrategy = "Random"\n', "application/toml", "PATCH")
    assert patch == {"routing": {"strategy": "Random"}}
    deep = "a = " + "[" * 40 + "]" * 40 + "\n"
    with pytest.raises(ConfigError, match="nested deeper than 32 levels"):
        parse_document(deep.encode(), "application/toml", "PATCH")
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_document(b"= 1\n", "application/toml; charset=utf-8", "PATCH")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_document(b'a = "\xff"\n', "application/toml", "PATCH")


def test_long_dotted_keys_are_refused_before_parsing() -> None:
    """tomllib takes time quadratic in a dotted key's parts: 100,000 parts would hold the
    event loop for minutes. Dots in strings and comments are not counted."""
    for body in (b"routing." + b"a." * 100_000 + b"b = 1\n",
                 b"[" + b'"a".' * 100_000 + b"b]\n",
                 b"x = {" + b"a . " * 100_000 + b"b = 1}\n"):
        with pytest.raises(ConfigError, match="a dotted key of more than 64 parts"):
            parse_document(body, "application/toml", "PATCH")
    dots = "." * 500
    text = (f'# {dots}\n[routing]\nstrategy = "Random" # {dots}\n'
            f'[logging]\nlevel = \'info\'\nformat = """\ntext{dots}"""\n')
    document = parse_document(text.encode(), "application/toml", "PATCH")
    assert document["routing"] == {"strategy": "Random"}


def test_the_search_path_is_the_working_directory_then_the_users_then_etc() -> None:
    paths = [str(p) for p in config_search_path({"HOME": "/home/u"})]
    assert paths == [
        "config.yaml", "config.yml", "config.toml",
        "/home/u/.config/continuum-router/config.yaml",
        "/home/u/.config/continuum-router/config.yml",
        "/home/u/.config/continuum-router/config.toml",
        "/etc/continuum-router/config.yaml", "/etc/continuum-router/config.yml",
        "/etc/continuum-router/config.toml",
    ]
    xdg = config_search_path({"HOME": "/home/u", "XDG_CONFIG_HOME": "/xdg"})
    assert str(xdg[3]) == "/xdg/continuum-router/config.yaml"
