"""The router as an ASGI 3 application: ``http``, ``websocket`` and ``lifespan`` scopes.

Served by an ASGI server with a trio event loop (hypercorn's trio worker)::

    CONTINUUM_CONFIG=router.yaml hypercorn --worker-class trio continuum.asgi:app

or mounted under a path prefix inside another ASGI application (see ``docs/operations.md``,
"The hypercorn front and ASGI"). The lifespan starts the same actor tree ``continuum.serve``
runs (backends, health checks, metrics, the Realtime relay) inside the server's trio loop,
and drains it on shutdown; a parent application that does not pass lifespan events on to
the apps it mounts enters :meth:`ContinuumASGI.running` in its own lifespan instead.

Requests are answered by the same Ingress as on the router's own HTTP/1.1 server: the same
routes, errors, streaming, auth and metrics (see ``continuum.net.server.asgi``). The ASGI
server does the parsing and TLS, so ``server.bind_address``, ``server.tls`` and
``server.frontend`` are the server's business here and not used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Final

import trio

from .actors.supervisor import RouterHandle, serve_asgi
from .config import Config, load_config
from .core.errors import render_error
from .net.server.asgi import AsgiFront, Receive, Scope, Send

__all__ = ["ContinuumASGI", "app", "create_app"]

#: The environment variable naming the config file of :data:`app` (and of ``create_app()``).
CONFIG_ENV: Final = "CONTINUUM_CONFIG"


class ContinuumASGI:
    """One router as an ASGI application. ``config``: a :class:`~continuum.Config`, a YAML
    path, or None to read the path from ``$CONTINUUM_CONFIG`` when the router starts.

    Until the router runs (before the lifespan's startup, after its shutdown) every request
    is answered 503. :attr:`handle` is the running router's :class:`~continuum.RouterHandle`.
    """

    def __init__(self, config: Config | str | os.PathLike[str] | None = None) -> None:
        self._config = config
        self.front = AsgiFront(render_error=render_error)
        self.front.lifespan = self._lifespan
        self.handle: RouterHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    def load_config(self) -> Config:
        config = self._config
        if isinstance(config, Config):
            return config
        if config is None:
            path = os.environ.get(CONFIG_ENV)
            if not path:
                raise RuntimeError(f"continuum.asgi: set {CONFIG_ENV} to the router's config "
                                   "file (or pass a config to create_app)")
            config = path
        return load_config(Path(config))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RouterHandle]:
        """Run the router while the block runs (its requests come through this app); drain
        it when the block ends. Needs a trio event loop."""
        config = self.load_config()
        try:
            async with trio.open_nursery() as nursery:
                handle: RouterHandle = await nursery.start(partial(serve_asgi, config,
                                                                   self.front))
                self.handle = handle
                try:
                    yield handle
                finally:
                    handle.shutdown()
        finally:
            self.front.detach()
            self.handle = None

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        started = False
        try:
            async with self.running():
                started = True
                await send({"type": "lifespan.startup.complete"})
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
        except Exception as exc:  # a bad config, a missing trio loop: the server says why
            kind = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": kind, "message": f"{type(exc).__name__}: {exc}"})
            return
        await send({"type": "lifespan.shutdown.complete"})


def create_app(config: Config | str | os.PathLike[str] | None = None) -> ContinuumASGI:
    """A new ASGI application for the router configured by ``config`` (see
    :class:`ContinuumASGI`); ``hypercorn 'continuum.asgi:create_app()'`` works too."""
    return ContinuumASGI(config)


#: ``continuum.asgi:app``: configured by ``$CONTINUUM_CONFIG`` when its lifespan starts.
app: Final = ContinuumASGI()
