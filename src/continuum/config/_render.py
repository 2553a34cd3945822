"""A configuration as output: the effective config as YAML or TOML with every secret masked
(``trio-continuum check``), and the warnings about what is valid but probably a mistake."""

from __future__ import annotations

import yaml

from ._schema import Config
from ._secrets import masked_builtins
from ._text import join_path
from ._toml import Syntax, dump_toml


def dump_effective_config(config: Config, syntax: Syntax = "yaml") -> str:
    """The effective configuration in ``syntax`` (YAML or TOML) with every secret shown as
    ``***``; it loads back as the same configuration (secrets aside)."""
    data = masked_builtins(config)
    source = config.source
    head = f"# effective configuration (from {source})\n" if source else ""
    if syntax == "toml":
        return head + dump_toml(data)
    return head + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def config_warnings(config: Config) -> list[str]:
    """What is valid but probably a mistake, each with its key path: limits that will not
    hold as written (switched off, or counted per worker process), and aliases and
    fallbacks naming a model no backend lists in its ``models``.

    Backends without ``models`` discover theirs at start, which a config alone cannot know:
    a model is only reported when every backend has a static list (the router checks the
    discovered lists again once it has started).
    """
    warnings = limit_warnings(config)
    if any(not b.models for b in config.backends):
        return warnings
    served = {m for b in config.backends for m in b.models}
    return warnings + unserved_model_warnings(config, served, "any backend's configured models")


def limit_warnings(config: Config) -> list[str]:
    rl = config.rate_limiting
    limits = rl.limits
    keyed = [
        f"api_keys[{e.id or i}]" for i, e in enumerate(config.api_keys.entries)
        if e.rate_limit or e.tokens_per_minute or e.max_concurrent
    ]
    configured = keyed or not all(
        lim.empty for lim in (limits.per_client, limits.per_api_key, limits.per_backend,
                              limits.global_, *limits.per_model.values())
    )
    if not configured:
        return []
    if not rl.enabled:
        return ["rate_limiting.enabled: false: no limit is enforced, neither "
                "rate_limiting.limits nor the keys' rate_limit, tokens_per_minute and "
                "max_concurrent"]
    workers = config.server.workers
    if rl.storage == "memory" and workers != 1:
        count = "one per CPU" if workers == 0 else str(workers)
        return [f"rate_limiting.storage: memory with server.workers: {count}: each worker "
                "process counts on its own, so clients get up to that many times each limit; "
                "use storage: redis to share the counts"]
    return []


def unserved_model_warnings(config: Config, served: set[str], where: str) -> list[str]:
    """``model_aliases`` targets and ``fallbacks`` entries not in ``served``."""
    warnings = []
    for alias, target in config.model_aliases.items():
        if target not in served:
            warnings.append(f"{join_path('model_aliases', alias)}: {target!r} is not in {where}")
    for model, chain in config.fallbacks.items():
        for i, fallback in enumerate(chain):
            if fallback not in served:
                path = f"{join_path('fallbacks', model)}[{i}]"
                warnings.append(f"{path}: {fallback!r} is not in {where}")
    return warnings
