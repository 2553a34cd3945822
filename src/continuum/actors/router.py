"""Router: model → eligible backends → one backend, by the configured strategy.

Its table changes only through control messages (health reports, discovered model lists)
handled by its own task; the request path reads the table synchronously.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import final

import trio

from .._config import RoutingConfig
from .._messages import ControlMessage, DiscoveryFailed, HealthReport, ModelsDiscovered
from .._strategies import Strategy, make_strategy
from .backend import BackendActor

log = logging.getLogger("continuum.router")


@final
class Router:
    def __init__(self, backends: Sequence[BackendActor], routing: RoutingConfig) -> None:
        self.backends: dict[str, BackendActor] = {b.name: b for b in backends}
        self.strategy: Strategy = make_strategy(routing.strategy)
        if self.strategy.name != routing.strategy:
            log.warning("routing.strategy %s is not implemented yet; using %s",
                        routing.strategy, self.strategy.name)
        self._table: dict[str, tuple[BackendActor, ...]] = {}
        #: Bumped on every change that alters what /v1/models shows (the CacheKeeper's key).
        self.version = 0
        self._rebuild()

    # -- request path (synchronous) -------------------------------------------------------

    def candidates(self, model: str) -> tuple[BackendActor, ...]:
        """Every backend that serves ``model``, healthy or not, in configuration order."""
        return self._table.get(model, ())

    def choose(
        self, model: str, exclude: Iterable[BackendActor] = ()
    ) -> BackendActor | None:
        """A healthy backend for ``model`` not in ``exclude``; None if there is none."""
        candidates = self._table.get(model)
        if not candidates:
            return None
        eligible = [b for b in candidates if b.health.healthy and b not in exclude]
        if not eligible:
            return None
        if len(eligible) == 1:
            return eligible[0]
        return self.strategy.choose(model, eligible)

    def models(self, healthy_only: bool = True) -> dict[str, tuple[BackendActor, ...]]:
        """model id → backends serving it (only healthy ones, by default)."""
        if not healthy_only:
            return dict(self._table)
        out: dict[str, tuple[BackendActor, ...]] = {}
        for model, backends in self._table.items():
            healthy = tuple(b for b in backends if b.health.healthy)
            if healthy:
                out[model] = healthy
        return out

    # -- control (the Router's task) -----------------------------------------------------

    def _rebuild(self) -> None:
        table: dict[str, list[BackendActor]] = {}
        for backend in self.backends.values():
            for model in backend.models:
                table.setdefault(model, []).append(backend)
        self._table = {model: tuple(bs) for model, bs in table.items()}
        self.version += 1

    def apply(self, message: ControlMessage, *, first: bool = False) -> None:
        """Apply one control message; ``first`` marks the round made before serving."""
        backend = self.backends.get(message.backend)
        if backend is None:
            return
        if isinstance(message, HealthReport):
            reason = message.reason or f"probe answered {message.status}"
            record = backend.health.record_first if first else backend.health.record
            if record(message.ok, reason):
                level = logging.INFO if message.ok else logging.WARNING
                log.log(level, "backend %s is now %s%s", backend.name,
                        backend.health.state.value, "" if message.ok else f" ({reason})")
                self.version += 1
        elif isinstance(message, ModelsDiscovered):
            models = frozenset(message.models)
            if models != backend.discovered_models:
                backend.discovered_models = models
                self._rebuild()
        elif isinstance(message, DiscoveryFailed):
            log.info("backend %s: model discovery failed: %s", backend.name, message.reason)

    async def run(self, inbox: trio.MemoryReceiveChannel[ControlMessage]) -> None:
        async for message in inbox:
            self.apply(message)
