"""Environment variables that override the file: the reference router's ``METRICS_*``.

They win over whatever the document says, on every load (start, reload, a document sent to
the admin API), so a container's environment decides; ``check`` shows the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from ._schema import ConfigError
from ._validation import Context, env_bool


def _flag(name: str, text: str, ctx: Context) -> bool:
    flag = env_bool(text)
    if flag is None:
        raise ConfigError(f"environment variable {name}: expected true or false (1/0, "
                          "yes/no, on/off)", source=ctx.source)
    return flag


def _text(name: str, text: str, ctx: Context) -> str:
    return text  # validated where it lands, like a ``${VAR}`` value


#: Variable → how its value is read, and the keys under ``metrics`` it sets (each to it).
METRICS_VARIABLES: Final[dict[str, tuple[Callable[[str, str, Context], object],
                                         tuple[str, ...]]]] = {
    "METRICS_ENABLED": (_flag, ("enabled",)),
    "METRICS_ENDPOINT": (_text, ("endpoint",)),
    "METRICS_ENABLE_BODY_SIZE": (_flag, ("optional_metrics.enable_request_body_size",
                                         "optional_metrics.enable_response_body_size")),
}


def apply_env_overrides(data: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """``data`` with the ``METRICS_*`` variables of ``ctx.env`` written into its ``metrics``
    section (a copy; ``data`` is not changed). Values set this way are hidden in error
    messages like ``${VAR}`` ones."""
    env = ctx.env
    present = [name for name in METRICS_VARIABLES if name in env]
    if not present:
        return data
    section = data.get("metrics")
    if section is not None and not isinstance(section, Mapping):
        return data  # validation says what is wrong with the section itself
    metrics: dict[str, Any] = dict(section or {})
    for name in present:
        read, keys = METRICS_VARIABLES[name]
        value = read(name, env[name], ctx)
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
