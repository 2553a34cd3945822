"""How key paths and values appear in messages and output: dotted key paths, secret-looking
key names, and masking (``***``) for secrets and URL passwords."""

from __future__ import annotations

import re

from ..core.secret_names import is_secret_name as is_secret_name
from ..core.urls import mask_secrets

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def join_path(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def last_key(path: str) -> str:
    m = re.search(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_-]*)$|\[(['\"])(.*)\2\]$", path)
    if m is None:
        return ""
    return m.group(1) or m.group(3) or ""


def type_name(value: object) -> str:
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


MASK = "***"


def mask(value: str | None) -> str | None:
    if value is None:
        return None
    return MASK if value else ""


def mask_url(url: str) -> str:
    """``url`` with its secrets shown as ``***`` (see :func:`mask_secrets`)."""
    return mask_secrets(url, MASK)
