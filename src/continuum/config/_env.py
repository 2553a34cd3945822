"""Environment variables that override the file: the reference router's ``METRICS_*``.

They win over whatever the document says, on every load (start, reload, a document sent to
the admin API), so a container's environment decides; ``check`` shows the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ._schema import ConfigError
from ._validation import Context

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

#: Variable → the keys under ``metrics`` it sets (every one to the same value).
METRICS_FLAGS: Final = {
    "METRICS_ENABLED": ("enabled",),
    "METRICS_ENABLE_BODY_SIZE": ("optional_metrics.enable_request_body_size",
                                 "optional_metrics.enable_response_body_size"),
}
METRICS_PATH: Final = "METRICS_ENDPOINT"


def _flag(name: str, text: str, ctx: Context) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(f"environment variable {name}: expected true or false (1/0, yes/no, "
                      "on/off)", source=ctx.source)


def apply_env_overrides(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """``data`` with the ``METRICS_*`` variables of ``ctx.env`` written into its ``metrics``
    section (a copy; ``data`` is not changed). Values set this way are hidden in error
    messages like ``${VAR}`` ones."""
    env = ctx.env
    present = [n for n in (*METRICS_FLAGS, METRICS_PATH) if n in env]
    if not present:
        return data
    section = data.get("metrics")
    if section is not None and not isinstance(section, Mapping):
        return data  # validation says what is wrong with the section itself
    metrics: dict[str, Any] = dict(section or {})
    for name in present:
        value: object = (env[name] if name == METRICS_PATH
                         else _flag(name, env[name], ctx))
        keys = ("endpoint",) if name == METRICS_PATH else METRICS_FLAGS[name]
        for key in keys:
            _set(metrics, key.split("."), value)
            ctx.substituted.setdefault(f"metrics.{key}", []).append(name)
    return {**data, "metrics": metrics}


def _set(section: dict[str, Any], keys: list[str], value: object) -> None:
    *parents, last = keys
    for key in parents:
        child = section.get(key, {})
        if not isinstance(child, Mapping):
            return  # validation says what is wrong with it
        section[key] = section = dict(child)
    section[last] = value
