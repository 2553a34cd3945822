"""One task per backend, for actors whose work is a loop per backend (health probes, model
discovery): the loops start and stop as backends come and go with config reloads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import final

import trio

from .backend import BackendActor


@final
class PerBackend:
    """Runs ``loop(backend)`` for each backend of the set last given to :meth:`want`, from
    the moment :meth:`run` runs; a backend that leaves the set has its loop cancelled."""

    def __init__(self, loop: Callable[[BackendActor], Awaitable[None]]) -> None:
        self._loop = loop
        self._wanted: list[BackendActor] = []
        #: id(backend) -> its loop's scope (by identity: a replaced backend of the same
        #: name is another loop).
        self._running: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    def want(self, backends: Iterable[BackendActor]) -> None:
        self._wanted = list(backends)
        if self._nursery is not None:
            self._sync(self._nursery)

    def _sync(self, nursery: trio.Nursery) -> None:
        wanted = {id(b): b for b in self._wanted}
        for key in [k for k in self._running if k not in wanted]:
            self._running.pop(key).cancel()
        for key, backend in wanted.items():
            if key not in self._running:
                scope = self._running[key] = trio.CancelScope()
                nursery.start_soon(self._scoped, backend, scope)

    async def _scoped(self, backend: BackendActor, scope: trio.CancelScope) -> None:
        with scope:
            await self._loop(backend)

    async def run(self) -> None:
        """Run the loops until cancelled (or until one raises: the caller's supervisor
        restarts this, and every loop with it)."""
        self._running.clear()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._sync(nursery)
                await trio.sleep_forever()
        finally:
            self._nursery = None
