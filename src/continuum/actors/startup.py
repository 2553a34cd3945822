"""The startup summary: one log block that says what this router is about to do.

A newcomer reading the log should see, without opening the config: where it listens, each
backend (type, API, URL without credentials, its models or that it is still discovering
them, its health after the first round), the strategy and which features are on. It is
written once, after the first health and discovery round, so discovered models are known.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from ..config import Config, limit_warnings, unserved_model_warnings
from ..core.urls import origin_and_path
from ..net.redis import RedisOptions
from .access import limit_plan

if TYPE_CHECKING:
    from .backend import BackendActor
    from .router import Router

log = logging.getLogger("continuum.supervisor")

#: Models shown per backend; the rest is counted.
_MODELS_SHOWN: Final = 8


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _models(backend: BackendActor) -> str:
    if backend.static_models:
        models, origin = sorted(backend.static_models), ""
    elif backend.discovered_models:
        models, origin = sorted(backend.discovered_models), " (discovered)"
    else:
        return "discovering"
    shown = ", ".join(models[:_MODELS_SHOWN])
    if len(models) > _MODELS_SHOWN:
        shown += f", ... ({len(models) - _MODELS_SHOWN} more)"
    return shown + origin


def _backend_line(backend: BackendActor) -> str:
    health = backend.health
    state = health.state.value.replace("_", " ")
    if not health.healthy and health.last_reason:
        state += f": {health.last_reason}"
    kind = backend.type if backend.type == backend.api else f"{backend.type}, {backend.api} API"
    return (f"  backend {backend.name} ({kind}) {origin_and_path(backend.url)}: "
            f"models {_models(backend)} [{state}]")


def _features(config: Config) -> str:
    hc, cb, cache = config.health_checks, config.circuit_breaker, config.cache
    metrics, tracing, keys = config.metrics, config.tracing, config.api_keys
    features = [
        f"health checks every {_seconds(hc.interval)}" if hc.enabled else "health checks off",
        "circuit breaker" if cb.enabled else "circuit breaker off",
        f"deduplication (ttl {_seconds(cache.deduplication.ttl)})"
        if cache.deduplication.enabled else "deduplication off",
    ]
    if metrics.enabled:
        where = f" on {metrics.bind_address}" if metrics.bind_address else ""
        features.append(f"metrics at {metrics.endpoint}{where}")
    else:
        features.append("metrics off")
    features.append(f"tracing ({tracing.exporter})" if tracing.enabled else "tracing off")
    entries = keys.entries
    if keys.mode == "blocking":
        enabled = sum(1 for k in entries if k.enabled)
        features.append(f"client API keys required ({enabled} enabled)")
    elif entries:
        features.append(f"client API keys recognised ({len(entries)}), not required")
    else:
        features.append("client API keys not checked")
    features.append(_limits(config))
    if config.cors.enabled:
        features.append("CORS")
    features.append("access log" if config.logging.access_log else "access log off")
    if config.server.workers != 1:
        features.append(f"worker processes: {config.server.workers or 'one per CPU'}")
    admin = config.admin
    where = f" on {admin.bind_address}" if admin.bind_address else ""
    auth = "local clients only, no auth" if admin.auth.method == "none" else admin.auth.method
    features.append(f"admin API{where} ({auth})")
    if config.hot_reload.enabled:
        features.append(f"hot reload (debounce {_seconds(config.hot_reload.debounce)})")
    return "; ".join(features)


def _limits(config: Config) -> str:
    rl = config.rate_limiting
    if limit_plan(config) is None:
        return "rate limits off" if rl.enabled else "rate limits disabled"
    if rl.storage == "redis":  # the address only: never the URL's password
        where = RedisOptions.from_url(rl.redis.url).address
        return f"rate limits in Redis at {where} (on_error: {rl.redis.on_error})"
    return "rate limits in memory"


def startup_summary(config: Config, addresses: Sequence[str], router: Router) -> str:
    """The block's text: ``listening on ...`` and then one indented line per item."""
    routing, request = config.routing, config.request
    lines = [f"listening on {', '.join(addresses)}"]
    lines.extend(_backend_line(b) for b in router.backends.values())
    lines.extend(f"  backend {b.name} ({b.type}): disabled"
                 for b in config.backends if not b.enabled)
    strategy: str = routing.strategy
    if routing.fallback_strategy != strategy:
        strategy += f" (then {routing.fallback_strategy})"
    retries = _count(config.max_retries, "retry", "retries")
    aliases = _count(len(config.model_aliases), "model alias", "model aliases")
    chains = _count(len(config.fallbacks), "fallback chain", "fallback chains")
    lines.append(f"  routing: {strategy}; {retries}; request timeout "
                 f"{_seconds(request.timeout)}; {aliases}; {chains}")
    lines.append(f"  features: {_features(config)}")
    return "\n".join(lines)


def log_startup_summary(config: Config, addresses: Sequence[str], router: Router,
                        worker: int | None = None) -> None:
    """Log the summary (at INFO), then a WARNING per alias or fallback that no backend
    serves, configured or discovered. With workers, only worker 0 writes the block."""
    if worker:
        log.info("worker %d: listening on %s", worker, ", ".join(addresses))
        return
    log.info("%s", startup_summary(config, addresses, router))
    for warning in limit_warnings(config):
        log.warning("%s: %s", config.source or "config", warning)
    served = set(router.models(healthy_only=False))
    where = "any backend's models (configured or discovered at start)"
    for warning in unserved_model_warnings(config, served, where):
        log.warning("%s: %s", config.source or "config", warning)
