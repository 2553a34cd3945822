"""Fleet: the backends in service, and how that set changes while requests run.

A config reload (or an admin call) changes backends in three ways, none of which loses a
request:

* **added** (a new entry, or one enabled again): a new BackendActor warms up first (its
  upstream protocol settled, a first probe and model list, connections pre-warmed), and only
  then is it put in the Router's table;
* **removed** (an entry deleted or disabled): it leaves the table at once, so no new request
  reaches it; requests already on it finish there, and its connections (and its in-process
  mock) close once none is left: it *drains*;
* **changed**: weight, models, queue length and health-check overrides change on the
  running actor (:meth:`BackendActor.tune`); anything else (URL, type, key, TLS, ...) makes
  a new actor that warms up, takes the old one's place in one step, and the old one drains.

The swap itself has no checkpoint: a request sees the old set or the new one, never half of
each. Choosing a backend and counting the request in its ``in_flight`` also happen without
a checkpoint between them (``Proxy._attempt``), so a drain that waits for ``in_flight`` to
reach zero never closes a pool under a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, final

import msgspec
import trio

from ..config import BackendConfig, Config
from ..core.endpoints import RESPONSES, RESPONSES_BRIDGE
from .backend import BackendActor, backend_endpoints, needs_new_actor, probes_enabled
from .catalog import ModelCatalog
from .metrics import MetricsSink
from .prober import HealthProber, probe
from .router import Router

if TYPE_CHECKING:
    from ..testing._upstream import MockUpstream, ResponseStore

log = logging.getLogger("continuum.supervisor")

#: Each step of a warm-up (settling the protocol; the first probe and model list) takes at
#: most this long; a backend slower than that is left to the regular rounds.
WARM_UP_BUDGET: Final = 2.0
#: How often a drain looks at the requests still in flight.
_DRAIN_POLL: Final = 0.05

Supervise = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[None]]


class Member(msgspec.Struct, eq=False):
    """A backend in service: its actor, its in-process mock (``type: mock``) and the scopes
    of the tasks that are its own."""

    actor: BackendActor
    mock: MockUpstream | None = None
    mock_scope: trio.CancelScope | None = None
    upkeep: trio.CancelScope = msgspec.field(default_factory=trio.CancelScope)


class Leaving(msgspec.Struct, eq=False):
    """A backend out of service whose requests are still finishing."""

    actor: BackendActor
    why: str  # "removed", "disabled" or "replaced"
    since: float  # time.time()
    gone: trio.Event = msgspec.field(default_factory=trio.Event)


@final
class Fleet:
    def __init__(self, nursery: trio.Nursery, supervise: Supervise) -> None:
        #: Backends in service, by name, in configuration order.
        self.members: dict[str, Member] = {}
        #: Backends draining after a reload took them out of service.
        self.leaving: list[Leaving] = []
        #: In-process mock upstreams of ``type: mock`` backends, by backend name (this dict
        #: is ``RouterHandle.mocks``).
        self.mocks: dict[str, MockUpstream] = {}
        self._nursery = nursery
        self._supervise = supervise
        self._store: ResponseStore | None = None
        self._router: Router | None = None
        self._prober: HealthProber | None = None
        self._catalog: ModelCatalog | None = None
        self._sink: MetricsSink | None = None

    # -- start ---------------------------------------------------------------------------

    async def open_all(self, config: Config) -> list[BackendActor]:
        """Actors (and mocks) for every enabled backend of ``config``, at start."""
        for backend in config.backends:
            if backend.enabled:
                self.members[backend.name] = await self._open(backend, config)
        return self.actors()

    def attach(self, router: Router, prober: HealthProber, catalog: ModelCatalog,
               sink: MetricsSink) -> None:
        """The actors a change of the set must tell (built from :meth:`open_all`'s list)."""
        self._router, self._prober, self._catalog, self._sink = router, prober, catalog, sink

    def start(self) -> None:
        """Run each member's own upkeep task (closing idle connections)."""
        for member in self.members.values():
            self._start_upkeep(member)

    def actors(self) -> list[BackendActor]:
        return [m.actor for m in self.members.values()]

    async def _open(self, backend: BackendConfig, config: Config) -> Member:
        if backend.type != "mock":
            return Member(BackendActor(backend, backend.url, config))
        from ..testing._upstream import MockUpstream, ResponseStore, serve_mock

        if self._store is None:  # one per router: its mocks act as replicas of one provider
            self._store = ResponseStore()
        # It serves what the backend says it does (a bridged one has no /v1/responses).
        served = backend_endpoints(backend, backend.mock.api)
        if RESPONSES_BRIDGE in served:
            served -= {RESPONSES}
        upstream = MockUpstream(backend.mock, backend.models or ("mock-model",),
                                name=backend.name, responses_store=self._store,
                                endpoints=served)
        scope = trio.CancelScope()

        async def run_mock(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                           ) -> None:
            with scope:
                await serve_mock(upstream, task_status=task_status)

        address = await self._nursery.start(run_mock)
        self.mocks[backend.name] = upstream
        actor = BackendActor(backend, f"http://{address}", config)
        return Member(actor, upstream, scope)

    def _start_upkeep(self, member: Member) -> None:
        actor = member.actor

        async def upkeep() -> None:
            with member.upkeep:
                await self._supervise(f"backend:{actor.name}", actor.run)

        self._nursery.start_soon(upkeep)

    # -- warm-up -------------------------------------------------------------------------

    async def warm_up(self, actors: Sequence[BackendActor], config: Config) -> None:
        """Get ``actors`` ready for traffic before any gets some: the upstream protocol
        (HTTP/2 by ALPN where configured), then at once the first probe, the first model
        list (backends without ``models``) and pre-warmed connections. Each step takes at
        most :data:`WARM_UP_BUDGET`; results are applied as they arrive."""
        router, prober, catalog = self._router, self._prober, self._catalog
        assert router is not None and prober is not None and catalog is not None
        if not actors:
            return
        with trio.move_on_after(WARM_UP_BUDGET):
            async with trio.open_nursery() as opening:
                for actor in actors:
                    opening.start_soon(actor.open, self._nursery)
        with trio.move_on_after(WARM_UP_BUDGET):
            async with trio.open_nursery() as first:

                async def first_discovery(actor: BackendActor) -> None:
                    router.apply_to(actor, await catalog.fetch(actor), first=True)

                async def first_probe(actor: BackendActor) -> None:
                    settings = prober.settings(actor)
                    report = await probe(actor, settings.endpoint, settings.timeout)
                    router.apply_to(actor, report, first=True)

                prewarm = config.http_client.prewarm_connections
                for actor in actors:
                    if not actor.static_models:
                        first.start_soon(first_discovery, actor)
                    if probes_enabled(actor.config, config):
                        first.start_soon(first_probe, actor)
                    if prewarm:
                        first.start_soon(actor.prewarm, prewarm)

    # -- a new config --------------------------------------------------------------------

    async def apply(self, config: Config) -> None:
        """Put ``config``'s enabled backends in service: open and warm up the new ones,
        tune the kept ones, swap the set in one step, drain the ones that left."""
        router, prober, catalog, sink = self._router, self._prober, self._catalog, self._sink
        assert router is not None and prober is not None
        assert catalog is not None and sink is not None
        wanted = [b for b in config.backends if b.enabled]
        fresh: dict[str, Member] = {}
        for backend in wanted:
            member = self.members.get(backend.name)
            if member is None or needs_new_actor(member.actor.config, backend):
                fresh[backend.name] = await self._open(backend, config)
        rediscover = [self.members[b.name].actor for b in wanted
                      if b.name not in fresh and not b.models
                      and self.members[b.name].actor.static_models]
        await self.warm_up([m.actor for m in fresh.values()], config)
        if rediscover:  # they lose their static list: know their own first
            with trio.move_on_after(WARM_UP_BUDGET):
                async with trio.open_nursery() as listing:
                    for actor in rediscover:
                        listing.start_soon(self._rediscover, actor)
        # The swap: no checkpoint from here on.
        members: dict[str, Member] = {}
        for backend in wanted:
            member = fresh.get(backend.name)
            if member is None:
                member = self.members[backend.name]
                member.actor.tune(backend, config)
            members[backend.name] = member
        in_config = {b.name for b in config.backends}
        leaving = [(m, "replaced" if name in members else
                    "disabled" if name in in_config else "removed")
                   for name, m in self.members.items() if members.get(name) is not m]
        self.members = members
        actors = self.actors()
        router.set_backends(actors)
        prober.update(actors, config.health_checks)
        catalog.update(actors, config.cache.model_cache_ttl, config.health_checks.timeout)
        sink.set_backends(actors)
        for member in fresh.values():
            self._start_upkeep(member)
        for member, why in leaving:
            self._retire(member, why)

    async def _rediscover(self, actor: BackendActor) -> None:
        assert self._router is not None and self._catalog is not None
        self._router.apply_to(actor, await self._catalog.fetch(actor), first=True)

    def _retire(self, member: Member, why: str) -> None:
        leaving = Leaving(member.actor, why, time.time())
        self.leaving.append(leaving)
        if self.mocks.get(member.actor.name) is member.mock and member.mock is not None:
            del self.mocks[member.actor.name]
        log.info("backend %s %s: draining %d request(s) in flight", member.actor.name, why,
                 member.actor.in_flight)
        self._nursery.start_soon(self._drain, member, leaving)

    async def _drain(self, member: Member, leaving: Leaving) -> None:
        """Wait until the requests on ``member`` have finished, then close it. Each is
        bounded by ``request.timeout`` or ``request.streaming_timeout``, so this ends."""
        actor = member.actor
        try:
            while actor.in_flight > 0:
                await trio.sleep(_DRAIN_POLL)
            log.info("backend %s drained and closed", actor.name)
        finally:
            actor.close()
            member.upkeep.cancel()
            if member.mock_scope is not None:
                member.mock_scope.cancel()
            self.leaving.remove(leaving)
            leaving.gone.set()

    async def wait_drained(self, name: str, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until no backend named ``name`` is draining;
        True when none is left."""
        with trio.move_on_after(timeout):
            while True:
                waiting = [entry for entry in self.leaving if entry.actor.name == name]
                if not waiting:
                    return True
                await waiting[0].gone.wait()
        return False

    def close(self) -> None:
        """The router stops: close every pool, draining ones included."""
        for member in self.members.values():
            member.actor.close()
        for leaving in self.leaving:
            leaving.actor.close()
