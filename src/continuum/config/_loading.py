"""Loading a configuration: YAML (PyYAML, safe loading, duplicate keys rejected) or TOML
(a ``.toml`` file), ``${VAR}`` / ``${VAR:-default}`` substitution, then validation into a
:class:`Config`.

Loading happens in four steps, each of which reports problems as a :class:`ConfigError`
naming the file, the dotted key path and what was expected:

1. parse the YAML or TOML (syntax errors name the line; duplicate keys are rejected);
2. substitute ``${VAR}`` / ``${VAR:-default}`` in every string scalar (every unset variable
   is reported at once);
3. walk the data along the schema (:func:`._validation.check_struct`);
4. build the Structs with ``msgspec.convert`` and run the cross-field checks
   (:func:`._validation.check_semantics`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
import msgspec.inspect as mi
import yaml

from ._env import apply_env_overrides
from ._schema import ApiKeyEntry, Config, ConfigError
from ._text import join_path, type_name
from ._toml import Syntax, parse_toml, syntax_of
from ._validation import Context, check_semantics, check_struct

_VAR_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _subst_str(text: str, path: str, ctx: Context) -> tuple[str, list[str]]:
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


def _substitute(value: Any, path: str, ctx: Context) -> Any:
    if isinstance(value, str):
        new, names = _subst_str(value, path, ctx)
        if names:
            ctx.substituted[path] = names
        return new
    if isinstance(value, list):
        return [_substitute(v, join_path(path, i), ctx) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str):
                k, _ = _subst_str(k, join_path(path, k), ctx)
            out[k] = _substitute(v, join_path(path, k), ctx)
        return out
    return value


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


@functools.cache
def _struct_type(cls: type) -> mi.StructType:
    """msgspec's description of a schema Struct, built once (it walks every field)."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info


def _read_key_file(checked: dict[str, Any], ctx: Context) -> None:
    """``api_keys.api_keys_file``: a YAML list of key entries (or a mapping whose
    ``api_keys`` is one), read now, ``${VAR}`` substituted, each entry checked like an
    inline one. Its errors name that file and ``api_keys[i]``. A relative path is taken
    from the config file's directory (else ``ctx.directory``, else the working directory)."""
    section = checked.get("api_keys")
    if not isinstance(section, dict) or not section.get("api_keys_file"):
        return
    name = section["api_keys_file"]
    path = Path(name)
    if not path.is_absolute():
        if Path(ctx.source).is_file():
            path = Path(ctx.source).parent / path
        elif ctx.directory is not None:
            path = Path(ctx.directory) / path
    file_ctx = Context(source=str(path), env=ctx.env)
    ctx.key_file = file_ctx
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ctx.error("api_keys.api_keys_file",
                        f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise file_ctx.error("", f"not UTF-8 text (byte offset {exc.start})") from None
    data = _parse_text(text, str(path), syntax_of(str(path)))
    if isinstance(data, dict) and set(data) == {"api_keys"}:
        data = data["api_keys"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise file_ctx.error("", f"expected a list of API key entries (or a mapping with an "
                                 f"'api_keys' list), got {type_name(data)}")
    data = _substitute(data, "api_keys", file_ctx)
    if file_ctx.missing:
        raise _missing_env_error(file_ctx)
    section["file_entries"] = [
        check_struct(item, _struct_type(ApiKeyEntry), join_path("api_keys", i), file_ctx)
        for i, item in enumerate(data)
    ]


def config_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", env: Mapping[str, str] | None = None,
    *, directory: str | None = None,
) -> Config:
    """Validate an already-parsed document (``${VAR}`` references are substituted).
    ``directory``: where a relative ``api_keys_file`` is when ``source`` is not a file
    (for a document sent to the admin API, the config file's directory)."""
    ctx = Context(source=source, env=os.environ if env is None else env, directory=directory)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"expected a mapping of sections at the top level, got {type_name(data)}",
            source=source,
        )
    substituted = apply_env_overrides(_substitute(dict(data), "", ctx), ctx)
    if ctx.missing:
        raise _missing_env_error(ctx)
    checked = check_struct(substituted, _struct_type(Config), "", ctx)
    checked["source"] = source
    _read_key_file(checked, ctx)
    try:
        cfg = msgspec.convert(checked, Config)
    except msgspec.ValidationError as exc:  # a backstop: the walk above should catch all
        raise _translate(exc, ctx) from None
    return check_semantics(cfg, ctx)


def _missing_env_error(ctx: Context) -> ConfigError:
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


def _translate(exc: msgspec.ValidationError, ctx: Context) -> ConfigError:
    text = str(exc)
    m = re.search(r" - at `\$(.*)`$", text)
    path = (m.group(1) if m else "").lstrip(".")
    detail = text[: m.start()] if m else text
    detail = re.sub(r", got `[^`]*`", "", detail)  # never echo values
    return ctx.error(path, detail[:1].lower() + detail[1:])


def _parse_text(text: str, source: str, syntax: Syntax) -> Any:
    """``text`` parsed; None for an empty document (as YAML reads one)."""
    if syntax == "toml":
        return parse_toml(text, source) or None
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None,
    *, syntax: Syntax = "yaml",
) -> Config:
    """Parse and validate a document written in ``syntax`` (YAML or TOML)."""
    data = _parse_text(text, source, syntax)
    if data is None:
        raise ConfigError(
            "the configuration is empty (at least 'backends' is required)", source=source
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of sections at the top level, got {type_name(data)}",
            source=source,
        )
    return config_from_dict(data, source=source, env=env)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute, validate and return the config at ``path`` (TOML when its name
    ends in ``.toml``, else YAML)."""
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
    return parse_config(text, source=source, env=env, syntax=syntax_of(source))


#: Where ``trio-continuum run`` looks for a config when none is named, in order (the
#: Continuum Router's places); at each, ``config.yaml``, ``config.yml``, then ``config.toml``.
CONFIG_NAMES: Final = ("config.yaml", "config.yml", "config.toml")


def config_search_path(env: Mapping[str, str] | None = None) -> list[Path]:
    """The files a config is looked for in when none is named: the working directory,
    the user's config directory (``$XDG_CONFIG_HOME`` or ``~/.config``) under
    ``continuum-router``, then ``/etc/continuum-router``."""
    env = os.environ if env is None else env
    home = env.get("HOME") or str(Path.home())
    user = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    places = [Path("."), Path(user) / "continuum-router", Path("/etc/continuum-router")]
    return [place / name for place in places for name in CONFIG_NAMES]
