"""Router: model → eligible backends → one backend, by the configured strategy.

Its table changes only through control messages (health reports, discovered model lists)
handled by its own task; the request path reads the table and records outcomes
synchronously (trio is single-threaded, so a method that does not await is atomic).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar, final

import trio

from ..config import Config, RoutingConfig
from ..core.circuit import BreakerState
from ..core.clock import now as clock
from ..core.errors import RouterError, quoted
from ..core.messages import ControlMessage, DiscoveryFailed, HealthReport, ModelsDiscovered
from ..core.strategies import RouteKey, Strategy, StrategyOptions, make_strategy
from .backend import BackendActor

_Refusal = TypeVar("_Refusal")

log = logging.getLogger("continuum.router")

#: /ready names at most this many backends when it explains why it is not ready.
_READY_REASONS = 5


def _strategy_model(model: str, stream: bool) -> str:
    """Strategies keep streamed and plain requests of a model apart: time to the head is
    the whole answer for one and the first token for the other."""
    return model + "\x00stream" if stream else model


def _eligible(backend: BackendActor, now: float, exclude: Iterable[BackendActor],
              apis: frozenset[str] | None, endpoint: str | None) -> bool:
    """May ``backend`` take a request now: available, not excluded, speaking one of
    ``apis`` and serving ``endpoint`` (each when given)? Its breaker is asked apart."""
    return (backend.available(now) and backend not in exclude
            and (apis is None or backend.api in apis)
            and (endpoint is None or endpoint in backend.endpoints))


@final
class Router:
    def __init__(self, backends: Sequence[BackendActor], config: Config) -> None:
        self.backends: dict[str, BackendActor] = {b.name: b for b in backends}
        self._table: dict[str, tuple[BackendActor, ...]] = {}
        #: Bumped on every change that alters what /v1/models shows (the ModelCatalog's key).
        self.version = 0
        self._routing: RoutingConfig | None = None
        self._weights = self._weights_now()
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take ``routing``, ``model_aliases`` and ``fallbacks`` (at start, and on a config
        reload). A changed ``routing`` gets a new strategy, which starts with no history
        (cursors, latencies, rings)."""
        if config.routing != self._routing:
            self._routing = config.routing
            self._new_strategy()
        #: Client model name → served model name.
        self.aliases: dict[str, str] = dict(config.model_aliases)
        #: Model → models to try, in order, when none of its backends can answer.
        self.fallbacks: dict[str, tuple[str, ...]] = dict(config.fallbacks)
        self._rebuild()

    def set_backends(self, backends: Sequence[BackendActor]) -> None:
        """The backends in service now, in configuration order (a config reload): requests
        already on a backend that left finish there; new ones see only these. New weights
        of backends that stay get a new strategy (ConsistentHash builds its rings from
        them); backends coming and going do not."""
        self.backends = {b.name: b for b in backends}
        weights = self._weights_now()
        if any(self._weights.get(name, weight) != weight for name, weight in weights.items()):
            self._new_strategy()
        self._weights = weights
        self._rebuild()

    def _weights_now(self) -> dict[str, int]:
        return {name: b.weight for name, b in self.backends.items()}

    def _new_strategy(self) -> None:
        routing = self._routing
        assert routing is not None
        options = StrategyOptions(
            ewma_alpha=routing.least_latency.alpha,
            exploration=routing.least_latency.exploration,
            stale_after=routing.least_latency.stale_after,
            hash_load_factor=routing.consistent_hash.load_factor,
            virtual_nodes=routing.consistent_hash.virtual_nodes,
        )
        self.strategy: Strategy = make_strategy(
            routing.strategy, routing.fallback_strategy, options=options,
            rng=random.Random(), clock=clock,
        )

    # -- request path (synchronous) -------------------------------------------------------

    def resolve(self, model: str) -> str:
        return self.aliases.get(model, model)

    def candidates(self, model: str) -> tuple[BackendActor, ...]:
        """Every backend that serves ``model``, available or not, in configuration order."""
        return self._table.get(model, ())

    def chain(self, model: str) -> tuple[str, ...]:
        """``model`` and then its fallbacks: the order in which models are tried."""
        fallbacks = self.fallbacks.get(model)
        return (model, *fallbacks) if fallbacks else (model,)

    def choose(
        self,
        model: str,
        exclude: Iterable[BackendActor] = (),
        hash_key: str | None = None,
        stream: bool = False,
        apis: frozenset[str] | None = None,
        endpoint: str | None = None,
    ) -> BackendActor | None:
        """An available backend for ``model`` not in ``exclude``; None if there is none.
        Only backends speaking one of ``apis`` and serving ``endpoint`` count, when given.

        A half-open circuit breaker admits a few trial requests: the breaker is asked only
        for the backend the strategy picked, and one that refuses is set aside.
        """
        candidates = self._table.get(model)
        if not candidates:
            return None
        now = clock()
        if len(candidates) == 1:
            # A model of one backend (the usual deployment): no list, no strategy.
            backend = candidates[0]
            if _eligible(backend, now, exclude, apis, endpoint) and backend.breaker.allow():
                return backend
            return None
        eligible = [b for b in candidates if _eligible(b, now, exclude, apis, endpoint)]
        key: RouteKey | None = None
        while eligible:
            if len(eligible) == 1:
                backend = eligible[0]
            else:
                if key is None:
                    key = RouteKey(_strategy_model(model, stream), hash_key)
                backend = self.strategy.choose(key, eligible)
            if backend.breaker.allow():
                return backend
            eligible.remove(backend)
        return None

    async def choose_admitted(
        self,
        model: str,
        exclude: Iterable[BackendActor],
        admit: Callable[[str], Awaitable[_Refusal | None]],
        hash_key: str | None = None,
        stream: bool = False,
        apis: frozenset[str] | None = None,
        endpoint: str | None = None,
    ) -> tuple[BackendActor | None, _Refusal | None]:
        """:meth:`choose`, with each choice's name put to ``admit`` (``per_backend`` limits): one it
        refuses is skipped for the next choice (its half-open trial slot given back). Returns
        the admitted backend (None when none was) and the last refusal (None when none)."""
        skipped = list(exclude)
        refused: _Refusal | None = None
        choice = self.choose(model, skipped, hash_key, stream, apis, endpoint)
        while choice is not None:
            denied = await admit(choice.name)
            if denied is None:
                return choice, refused
            refused = denied
            self.release(choice)
            skipped.append(choice)
            choice = self.choose(model, skipped, hash_key, stream, apis, endpoint)
        return None, refused

    def has_alternative(
        self,
        model: str,
        exclude: Iterable[BackendActor],
        apis: frozenset[str] | None = None,
        endpoint: str | None = None,
    ) -> bool:
        """Is another backend available for ``model``? (No side effects, unlike choose.)"""
        now = clock()
        return any(_eligible(b, now, exclude, apis, endpoint) for b in self._table.get(model, ()))

    def record(
        self,
        backend: BackendActor,
        model: str,
        latency: float | None,
        ok: bool,
        reason: str = "",
        stream: bool = False,
    ) -> None:
        """The outcome of one attempt: feeds the strategy, the breaker and passive health.

        ``ok`` is about the backend: a connection failure or a 5xx is not ok; an answer the
        client caused (a 4xx) is ok for the backend. ``latency`` is the time to the
        response head: the whole answer for a plain request, the first token for a stream.
        """
        strategy = self.strategy
        if strategy.learns:
            strategy.record(backend.name, _strategy_model(model, stream), latency, ok)
        if not ok and reason:
            backend.last_failure = reason
        changed = backend.breaker.record(ok)
        if changed is not None:
            log.warning("backend %s: circuit breaker %s%s", backend.name, changed.value,
                        f" ({reason})" if reason and changed is BreakerState.OPEN else "")
            self.version += 1
        if backend.health.record_traffic(ok, reason):
            log.warning("backend %s is now %s after failed requests (%s)", backend.name,
                        backend.health.state.value, reason)
            self.version += 1

    def release(self, backend: BackendActor) -> None:
        """An attempt that ended without an outcome (cancelled): give back a trial slot."""
        backend.breaker.release_trial()

    def why_unavailable(
        self, models: Iterable[str], apis: frozenset[str] | None = None,
        endpoint: str | None = None,
    ) -> tuple[str, float]:
        """For the error when no backend of ``models`` (a fallback chain) could be chosen:
        the most telling reason (``overloaded`` beats ``circuit_open`` beats
        ``cooling_down`` beats ``unhealthy``) and how long it is likely to last (s).

        Only backends whose API serves the path count. One that is available again (a
        cool-down ran out a moment ago) is no reason; a half-open breaker whose trial slots
        are all taken is ``circuit_open``.
        """
        now = clock()
        reasons: list[tuple[str, float]] = []
        for model in models:
            for backend in self._table.get(model, ()):
                if apis is not None and backend.api not in apis:
                    continue
                if endpoint is not None and endpoint not in backend.endpoints:
                    continue
                if not backend.available(now):
                    reasons.append(backend.unavailable_reason(now))
                elif backend.breaker.state is BreakerState.HALF_OPEN:
                    reasons.append(("circuit_open", 1.0))
        for wanted in ("overloaded", "circuit_open", "cooling_down", "unhealthy"):
            waits = [wait for reason, wait in reasons if reason == wanted]
            if waits:
                return wanted, min(waits)
        return "unhealthy", 0.0

    def _why_detail(
        self, models: Iterable[str], apis: frozenset[str] | None, reason: str
    ) -> str:
        """What the error says about the first backend unavailable for ``reason``: its load
        against its capacity, or the failure that opened its breaker or made it unhealthy."""
        now = clock()
        for model in models:
            for b in self._table.get(model, ()):
                if apis is not None and b.api not in apis:
                    continue
                if reason == "overloaded" and b.in_flight >= b.capacity:
                    return (f" (backend {quoted(b.name)}: {b.in_flight} requests in flight, "
                            f"max_in_flight {b.max_in_flight} + max_queue "
                            f"{b.capacity - b.max_in_flight})")
                if reason == "circuit_open" and not b.breaker.closed and b.last_failure:
                    return f" (backend {quoted(b.name)}, last failure: {b.last_failure})"
                if (reason == "unhealthy" and not b.available(now)
                        and b.health.last_reason):
                    return f" (backend {quoted(b.name)}: {b.health.last_reason})"
        return ""

    def unavailable_error(
        self, models: Sequence[str], apis: frozenset[str] | None, client_model: str,
        endpoint: str | None = None,
    ) -> RouterError:
        """The 429/503 for a request none of whose backends could be chosen, saying why and
        (``Retry-After``, whole seconds rounded up) for how long."""
        reason, wait = self.why_unavailable(models, apis, endpoint)
        name = quoted(client_model)
        seconds = max(1, math.ceil(wait))
        detail = self._why_detail(models, apis, reason)
        if reason == "overloaded":
            return RouterError(429, f"Every backend for model {name} is at capacity{detail}",
                               code="overloaded", retry_after=seconds)
        if reason == "circuit_open":
            return RouterError(503, f"Every backend for model {name} is failing "
                               f"(circuit breaker open){detail}", code="circuit_open",
                               retry_after=seconds)
        if reason == "cooling_down":
            return RouterError(
                503, f"Every backend for model {name} is cooling down: the upstream asked to "
                f"retry later (Retry-After); the first one is available again in {seconds} s",
                code="cooling_down", retry_after=seconds,
            )
        return RouterError(503, f"No healthy backend is available for model {name}{detail}",
                           retry_after=seconds)

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

    def readiness(self) -> tuple[int, str]:
        """For ``GET /ready``: how many backends are healthy and serve a model, and when
        none is, why (one short clause per backend, a few at most)."""
        ready = sum(1 for b in self.backends.values() if b.health.healthy and b.models)
        if ready:
            return ready, ""
        reasons = []
        for backend in list(self.backends.values())[:_READY_REASONS]:
            health = backend.health
            if not health.healthy:
                why = health.state.value.replace("_", " ")
                if health.last_reason:
                    why += f" ({health.last_reason})"
            else:
                why = "serves no model yet (model discovery has not succeeded)"
            reasons.append(f"{backend.name}: {why}")
        if len(self.backends) > _READY_REASONS:
            reasons.append(f"and {len(self.backends) - _READY_REASONS} more")
        return 0, "; ".join(reasons)

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
        if backend is not None:
            self.apply_to(backend, message, first=first)

    def apply_to(self, backend: BackendActor, message: ControlMessage, *,
                 first: bool = False) -> None:
        """Apply a message about ``backend``, which need not be in service yet: a backend
        added by a reload warms up (first probe, first model list) before it is."""
        if isinstance(message, HealthReport):
            health = backend.health
            before = health.state
            reason = message.reason or f"probe answered {message.status}"
            changed = health.record_probe(
                message.status, message.ok, reason, trio.current_time(), first=first
            )
            if changed:
                level = logging.INFO if health.healthy else logging.WARNING
                log.log(level, "backend %s: %s -> %s%s", backend.name, before.value,
                        health.state.value, "" if health.healthy else f" ({reason})")
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
