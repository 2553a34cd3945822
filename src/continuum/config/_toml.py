"""TOML config documents: read with the standard library's ``tomllib``, written with
``tomli-w``, both imported on first use (with ``decimal`` they take ~4 ms of every start-up
otherwise, and most configs are YAML).

A config may be written in TOML as well as YAML (the file's ``.toml`` suffix says which);
both read into the same plain data, so everything after parsing (``${VAR}`` substitution,
validation, key paths in errors) is shared. TOML has no null: a document written here leaves
out the keys whose value is null, which read back as the same value because every field
that may be null defaults to null (``tests/config/test_toml.py`` walks the schema to keep it
so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from ._schema import ConfigError

#: The two syntaxes a config document can be written in.
Syntax = Literal["yaml", "toml"]

#: File suffixes read as TOML; anything else is YAML.
TOML_SUFFIXES: Final = (".toml",)


def syntax_of(path: str) -> Syntax:
    """The syntax of the config file at ``path``, by its suffix."""
    return "toml" if path.lower().endswith(TOML_SUFFIXES) else "yaml"


#: Most parts a dotted key may have: a config is a few levels deep, and ``tomllib`` takes
#: time quadratic in a key's parts (10,000 parts, a 20 KB document: seconds).
MAX_KEY_PARTS: Final = 64

#: Strings and comments, whose dots are not key separators. Where this ends a string
#: earlier than TOML does (an escaped quote in a multi-line string), more text is counted:
#: the check can only be stricter, never be fooled.
_STRINGS_AND_COMMENTS: Final = re.compile(
    r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*')
#: A run of what a dotted key is made of, quoted parts taken out.
_KEY_RUN: Final = re.compile(r"[\w \t.-]+")


def _most_key_dots(text: str) -> int:
    """The most dots in one run of key characters outside strings and comments: at least
    one less than the parts of the longest dotted key (a float has one)."""
    bare = _STRINGS_AND_COMMENTS.sub("", text)
    return max((run.count(".") for run in _KEY_RUN.findall(bare)), default=0)


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """``text`` as a TOML document; a :class:`ConfigError` naming ``source`` and the line
    for a syntax error (``tomllib`` says where), or for nesting too deep to parse (keys of
    more than :data:`MAX_KEY_PARTS` parts are refused before parsing)."""
    if _most_key_dots(text) >= MAX_KEY_PARTS:
        raise ConfigError(f"invalid TOML: a dotted key of more than {MAX_KEY_PARTS} parts",
                          source=source)
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None
    except RecursionError:
        raise ConfigError("invalid TOML: nested too deeply", source=source) from None


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_nulls(v) for v in value]
    return value


def dump_toml(document: Mapping[str, Any]) -> str:
    """``document`` (plain data, e.g. a config's masked builtins) as TOML text, null
    values left out."""
    import tomli_w

    return tomli_w.dumps(_without_nulls(document))
