"""Supervisor: the root nursery of one router; ``serve`` is its entry point.

Everything a router owns hangs off the objects built here, never off module globals, so
several routers run side by side in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, final

import trio

from .._config import Config
from .._errors import render_error
from .._http._listeners import HTTPServer, open_listeners
from .._http._server import HTTPLimits
from .._messages import ControlMessage, RequestObserved
from .._metrics import Metrics
from .backend import BackendActor
from .cache import CacheKeeper
from .health import HealthProber
from .ingress import Ingress
from .metrics import MetricsSink
from .router import Router

if TYPE_CHECKING:
    from ..mock import MockUpstream

log = logging.getLogger("continuum.supervisor")

#: The first health/discovery round may delay readiness by at most this much; a backend
#: slower than that is left to the regular probes.
STARTUP_PROBE_BUDGET: Final = 2.0
_RESTART_MIN: Final = 0.1
_RESTART_MAX: Final = 10.0
_CONTROL_BUFFER: Final = 1024
_OBSERVATION_BUFFER: Final = 16384


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run an actor; on a crash log why and restart it with exponential backoff."""
    delay = _RESTART_MIN
    while True:
        started = trio.current_time()
        try:
            await run()
            return
        except Exception:
            if trio.current_time() - started > 60.0:
                delay = _RESTART_MIN  # it ran well for a while: start the backoff over
            log.exception("actor %s crashed; restarting in %.1fs", name, delay)
        await trio.sleep(delay)
        delay = min(delay * 2, _RESTART_MAX)


@final
class RouterHandle:
    """What ``nursery.start(continuum.serve, config)`` returns."""

    def __init__(
        self,
        config: Config,
        server: HTTPServer,
        router: Router,
        cache: CacheKeeper,
        metrics: MetricsSink,
        mocks: dict[str, MockUpstream],
    ) -> None:
        self.config = config
        #: Bound addresses, e.g. ``["127.0.0.1:8080", "[::1]:8080", "unix:/run/c.sock"]``.
        self.addresses: list[str] = list(server.addresses)
        self.router = router
        self.cache = cache
        self.metrics = metrics
        #: In-process mock upstreams of ``type: mock`` backends, by backend name.
        self.mocks = mocks
        self._server = server

    @property
    def backends(self) -> dict[str, BackendActor]:
        return self.router.backends

    @property
    def url(self) -> str:
        """``http://host:port`` of the first TCP address (handy for clients and tests)."""
        for address in self.addresses:
            if not address.startswith("unix:"):
                host, _, port = address.rpartition(":")
                if host == "0.0.0.0":
                    host = "127.0.0.1"
                elif host == "[::]":
                    host = "[::1]"
                return f"http://{host}:{port}"
        raise LookupError("the router listens on Unix sockets only")

    def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (up to ``shutdown_timeout``), exit."""
        self._server.drain()


async def _start_mocks(
    config: Config, nursery: trio.Nursery
) -> tuple[dict[str, MockUpstream], dict[str, str]]:
    """Run an in-process mock upstream for each ``type: mock`` backend."""
    mocks: dict[str, MockUpstream] = {}
    urls: dict[str, str] = {}
    if not any(b.type == "mock" for b in config.backends):
        return mocks, urls
    from ..mock import MockUpstream, serve_mock

    for backend in config.backends:
        if backend.type == "mock":
            upstream = MockUpstream(backend.mock, backend.models or ("mock-model",),
                                    name=backend.name)
            mocks[backend.name] = upstream
            urls[backend.name] = f"http://{await nursery.start(serve_mock, upstream)}"
    return mocks, urls


async def serve(
    config: Config, *, task_status: trio.TaskStatus[RouterHandle] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run one router until it is shut down or cancelled (both drain gracefully).

    With ``nursery.start`` it returns a :class:`RouterHandle` once every address is bound
    and the first health and discovery round is in.
    """
    server_cfg = config.server
    # Bind first: a taken port is a plain OSError before anything else has started.
    listeners = await open_listeners(
        server_cfg.bind_address, socket_mode=server_cfg.socket_mode,
        reuse_port=server_cfg.workers > 1,
    )
    try:
        await _serve(config, listeners, task_status)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def _serve(
    config: Config,
    listeners: list[trio.SocketListener],
    task_status: trio.TaskStatus[RouterHandle],
) -> None:
    server_cfg = config.server
    async with trio.open_nursery() as root:
        mocks, mock_urls = await _start_mocks(config, root)
        backends = [BackendActor(b, mock_urls.get(b.name, b.url), config) for b in config.backends]
        router = Router(backends, config.routing)
        control_send, control_receive = trio.open_memory_channel[ControlMessage](_CONTROL_BUFFER)
        observe_send, observe_receive = trio.open_memory_channel[RequestObserved](
            _OBSERVATION_BUFFER
        )
        cache = CacheKeeper(router, backends, config.cache.model_cache_ttl,
                            config.health_checks.timeout, control_send)
        prober = HealthProber(backends, config.health_checks, control_send)
        limits = HTTPLimits(
            max_header_size=server_cfg.max_header_size,
            max_body_size=server_cfg.max_request_body_size,
            request_read_timeout=server_cfg.request_read_timeout,
            keepalive_timeout=server_cfg.keepalive_timeout,
        )
        connections: list[HTTPServer] = []
        sink = MetricsSink(Metrics(), backends, lambda m: bool(router.candidates(m)), cache,
                           lambda: len(connections[0].connections) if connections else 0)
        ingress = Ingress(config, router, cache, sink, observe_send)
        shortest = min(limits.keepalive_timeout, limits.request_read_timeout,
                       config.request.timeout)
        server = HTTPServer(listeners, ingress.handle, limits,
                            shutdown_timeout=server_cfg.shutdown_timeout,
                            render_error=render_error, timer_resolution=shortest / 10)
        connections.append(server)

        # The first round is applied directly, so the table is complete when we report ready.
        with trio.move_on_after(STARTUP_PROBE_BUDGET):
            async with trio.open_nursery() as first:

                async def first_discovery() -> None:
                    for message in await cache.discover_all():
                        router.apply(message, first=True)

                async def first_probes() -> None:
                    for report in await prober.probe_all():
                        router.apply(report, first=True)

                first.start_soon(first_discovery)
                if config.health_checks.enabled:
                    first.start_soon(first_probes)
                for backend in backends:
                    first.start_soon(backend.prewarm, min(4, backend.pool.limits.max_idle))

        root.start_soon(supervise, "router", lambda: router.run(control_receive))
        root.start_soon(supervise, "metrics", lambda: sink.run(observe_receive))
        root.start_soon(supervise, "health", prober.run)
        root.start_soon(supervise, "cache", cache.run)
        for backend in backends:
            root.start_soon(supervise, f"backend:{backend.name}", backend.run)

        if config.cache.deduplication.enabled:
            log.warning("cache.deduplication is not implemented yet: requests are not "
                        "deduplicated")
        handle = RouterHandle(config, server, router, cache, sink, mocks)
        log.info("listening on %s", ", ".join(server.addresses))
        task_status.started(handle)
        try:
            async with trio.open_nursery() as front:
                front.start_soon(_drain_when_cancelled, server)
                with trio.CancelScope(shield=True):
                    await server.run()
                front.cancel_scope.cancel()
        finally:
            for backend in backends:
                backend.close()
            root.cancel_scope.cancel()


async def _drain_when_cancelled(server: HTTPServer) -> None:
    try:
        await trio.sleep_forever()
    finally:
        server.drain()
