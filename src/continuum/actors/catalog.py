"""ModelCatalog: backends' model lists (refreshed every ``model_cache_ttl``) and the merged
``/v1/models`` answer, rebuilt only when the Router's table changed or the TTL ran out.

(The config key, the ``model_cache_events`` metric and the ``continuum.cache`` logger keep
their published names; in the code, "cache" is no longer a name for it.)"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import final

import msgspec
import trio

from ..core.messages import ControlMessage, DiscoveryFailed, ModelsDiscovered
from ..net.client.exchange import UpstreamError
from .backend import BackendActor
from .loops import PerBackend
from .router import Router

log = logging.getLogger("continuum.cache")  # its published name

_LIST_LIMIT = 16 * 1024 * 1024
#: Pages of a model list read at most (20,000 models at the largest page size).
_MAX_PAGES = 20
_RETRY_FAILED = 5.0


class ModelObject(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class AliasInfo(msgspec.Struct):
    alias_of: str


class AliasObject(ModelObject, kw_only=True):
    """An alias (``model_aliases``) in ``/v1/models``: the four standard fields, plus
    ``"continuum": {"alias_of": "<served model>"}``, an extra field OpenAI clients ignore."""

    continuum: AliasInfo


class ModelListObject(msgspec.Struct):
    data: list[ModelObject]
    object: str = "list"


_encode = msgspec.json.Encoder().encode


class CatalogStats(msgspec.Struct, frozen=True):
    hits: int
    misses: int
    evictions: int


async def fetch_models(backend: BackendActor, timeout: float) -> tuple[str, ...]:
    """The backend's model list, every page of it (at most :data:`_MAX_PAGES`: a list that
    never ends is kept as far as it was read)."""
    profile = backend.profile
    ids: dict[str, None] = {}
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        target = profile.models_page_path(cursor)
        status, body = await backend.get(target, timeout, _LIST_LIMIT)
        path = target.decode("latin-1")
        if status != 200:
            raise UpstreamError(f"GET {path} answered {status}")
        try:
            page, cursor = profile.model_page(body)
        except (msgspec.DecodeError, ValueError) as exc:
            raise UpstreamError(f"GET {path} returned an unreadable list: {exc}") from None
        ids.update(dict.fromkeys(page))
        if cursor is None:
            break
    else:
        log.warning("backend %s: its model list goes on past %d pages; using the first %d "
                    "ids", backend.name, _MAX_PAGES, len(ids))
    return tuple(ids)


@final
class ModelCatalog:
    def __init__(
        self,
        router: Router,
        backends: Sequence[BackendActor],
        model_cache_ttl: float,
        timeout: float,
        router_inbox: trio.MemorySendChannel[ControlMessage],
    ) -> None:
        self.router = router
        self.ttl = model_cache_ttl
        self.timeout = timeout
        #: Only backends without a static ``models`` list need discovery.
        self.discovering = [b for b in backends if not b.static_models]
        self._router = router_inbox
        self._loops = PerBackend(self._refresh_loop)
        self._created = int(time.time())
        self._cached: bytes | None = None
        self._cached_version = -1
        self._cached_at = 0.0
        self._discovered_ok: dict[str, bool] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def stats(self) -> CatalogStats:
        return CatalogStats(self.hits, self.misses, self.evictions)

    def models_response(self) -> bytes:
        """The merged ``/v1/models`` body: one entry per id, healthy backends only."""
        now = trio.current_time()
        cached = self._cached
        if cached is not None:
            if self._cached_version == self.router.version and now - self._cached_at < self.ttl:
                self.hits += 1
                return cached
            self.evictions += 1
        self.misses += 1
        served = self.router.models()
        entries = [self._entry(model, served) for model in served.keys() | self.router.aliases]
        data = sorted((e for e in entries if e is not None), key=lambda e: e.id)
        body = _encode(ModelListObject(data))
        self._cached, self._cached_version, self._cached_at = body, self.router.version, now
        return body

    def model_response(self, model: str) -> bytes | None:
        entry = self._entry(model, self.router.models())
        return None if entry is None else _encode(entry)

    def _entry(
        self, model: str, served: dict[str, tuple[BackendActor, ...]]
    ) -> ModelObject | None:
        """``model``'s entry: a served model, or an alias whose target is served (an alias
        wins over a served model of the same name, as it does for routing); None if no
        healthy backend serves it."""
        target = self.router.aliases.get(model)
        backends = served.get(model if target is None else target)
        if not backends:
            return None
        owner = backends[0].name
        if target is None:
            return ModelObject(id=model, created=self._created, owned_by=owner)
        return AliasObject(id=model, created=self._created, owned_by=owner,
                           continuum=AliasInfo(target))

    async def fetch(self, backend: BackendActor) -> ModelsDiscovered | DiscoveryFailed:
        try:
            models = await fetch_models(backend, self.timeout)
        except (UpstreamError, trio.TooSlowError) as exc:
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            self._discovered_ok[backend.name] = False
            return DiscoveryFailed(backend.name, reason)
        self._discovered_ok[backend.name] = True
        return ModelsDiscovered(backend.name, models)

    async def _discover(self, backend: BackendActor) -> bool:
        message = await self.fetch(backend)
        await self._router.send(message)
        return isinstance(message, ModelsDiscovered)

    async def _refresh_loop(self, backend: BackendActor) -> None:
        ok = self._discovered_ok.get(backend.name, False)
        while True:
            # A failed discovery is retried soon; a good list lives for the TTL.
            await trio.sleep(max(self.ttl, 1.0) if ok else min(max(self.ttl, 1.0), _RETRY_FAILED))
            ok = await self._discover(backend)

    async def discover_all(self) -> list[ModelsDiscovered | DiscoveryFailed]:
        """One round over every discovering backend (made before ``serve`` reports ready)."""
        results: list[ModelsDiscovered | DiscoveryFailed] = []

        async def one(backend: BackendActor) -> None:
            results.append(await self.fetch(backend))

        async with trio.open_nursery() as nursery:
            for backend in self.discovering:
                nursery.start_soon(one, backend)
        return results

    def update(self, backends: Sequence[BackendActor], model_cache_ttl: float,
               timeout: float) -> None:
        """A config reload: these backends, this TTL and timeout from now on. Backends that
        start or stop needing discovery start or stop their loop; the merged answer is
        rebuilt on its next request."""
        self.ttl = model_cache_ttl
        self.timeout = timeout
        self.discovering = [b for b in backends if not b.static_models]
        self._cached = None
        self._loops.want(self.discovering)

    async def run(self) -> None:
        self._loops.want(self.discovering)
        await self._loops.run()
