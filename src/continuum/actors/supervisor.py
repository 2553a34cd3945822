"""Supervisor: the root nursery of one router; ``serve`` is its entry point.

Everything a router owns hangs off the objects built here, never off module globals, so
several routers run side by side in one process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol, final

import trio

from ..config import Config, ConfigError
from ..core.errors import JSON_HEADERS, render_error
from ..core.messages import ControlMessage
from ..net.redis import RedisClient, RedisError
from ..net.server.connection import HTTPLimits, Request, ServerConnection
from ..net.server.listeners import HTTPServer, open_listeners
from ..net.server.tls import make_server_context, reload_server_context
from ..net.stream_pump import StreamPump
from ..observability.metrics import Metrics
from .access import AccessControl, needed, redis_client
from .admin import PREFIX as ADMIN_PREFIX
from .admin import AdminAPI, serve_admin
from .admin import label as admin_label
from .backend import BackendActor
from .catalog import ModelCatalog
from .dedup import Deduplicator
from .fleet import WARM_UP_BUDGET, Fleet
from .fronts import build_fronts
from .ingress import Ingress
from .metrics import MetricsSink, serve_metrics
from .prober import HealthProber
from .proxy import Proxy
from .realtime import RealtimeGateway
from .reload import Outcome, Reconfigurer, ReloadHooks, first_version, register_sections
from .router import Router
from .startup import log_startup_summary
from .versions import ConfigVersion, MemoryVersions, SharedVersions, VersionStore
from .workers import SYNC_PATH, WorkerEnvironment, gather_metrics, notify_siblings

if TYPE_CHECKING:
    from ..net.server.asgi import AsgiFront
    from ..testing._upstream import MockUpstream

log = logging.getLogger("continuum.supervisor")

#: The first health/discovery round may delay readiness by at most this much; a backend
#: slower than that is left to the regular probes.
STARTUP_PROBE_BUDGET: Final = WARM_UP_BUDGET
_RESTART_MIN: Final = 0.1
_RESTART_MAX: Final = 10.0
_CONTROL_BUFFER: Final = 1024
#: Streams still running this long before the drain deadline (half the deadline when it is
#: shorter) are ended with an error event, so the event is out before connections are cut;
#: ``abort`` gives streams at most this long to write theirs.
ENDING_GRACE: Final = 1.0
_ENDING_RECHECK: Final = 0.05


class Front(Protocol):
    """Who speaks HTTP to clients: ``HTTPServer`` (native), ``HypercornFront``, or the
    embedded ASGI app's ``_EmbeddedFront``. ``run`` returns once drained."""

    @property
    def addresses(self) -> list[str]: ...

    @property
    def connections(self) -> Collection[object]: ...

    def drain(self) -> None: ...

    async def run(self) -> None: ...


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
class _Stop:
    """How one router stops: ``drain`` (graceful, bounded by ``shutdown_timeout``) and
    ``abort`` (now). Either way a stream still running is not cut mid-chunk: it gets the
    error event of its API first (``Proxy.stop_streams``)."""

    def __init__(self, server: Front, proxy: Proxy, front: trio.CancelScope,
                 timeout: float, realtime: RealtimeGateway | None = None) -> None:
        self._server = server
        self._proxy = proxy
        self._realtime = realtime
        self._front = front
        self._timeout = timeout
        self._draining = False
        #: The nursery beside ``HTTPServer.run`` (inside ``front``, so shielded like it).
        self.nursery: trio.Nursery | None = None

    def drain(self) -> None:
        self._server.drain()
        if self._draining or self.nursery is None:
            return
        self._draining = True
        now = trio.current_time()
        grace = min(ENDING_GRACE, self._timeout / 2)
        self.nursery.start_soon(self._end_streams, now + self._timeout - grace,
                                now + self._timeout)

    def abort(self) -> None:
        self._server.drain()
        self._draining = True
        if self.nursery is None:
            self._front.cancel()
            return
        self.nursery.start_soon(self._abort)

    async def _end_streams(self, at: float, until: float) -> None:
        """From ``at`` on, end the streams still running (again every 50 ms for streams
        that were only starting) until the server cuts every connection at ``until``."""
        await trio.sleep_until(at)
        if self._realtime is not None:
            self._realtime.stop()  # both hops of each session get 1001 before the cut
        while True:
            self._proxy.stop_streams()
            if trio.current_time() >= until:
                return
            await trio.sleep(_ENDING_RECHECK)

    async def _abort(self) -> None:
        if self._realtime is not None:
            self._realtime.stop()
        proxy = self._proxy
        with trio.move_on_after(ENDING_GRACE):
            while proxy.streams:  # a stream leaves the set once its ending is written
                proxy.stop_streams()
                await trio.sleep(0.01)
        self._front.cancel()


@final
class RouterHandle:
    """What ``nursery.start(continuum.serve, config)`` returns."""

    def __init__(
        self,
        server: Front,
        router: Router,
        catalog: ModelCatalog,
        metrics: MetricsSink,
        stop: _Stop,
        reconfigurer: Reconfigurer,
        fleet: Fleet,
        admin: AdminAPI,
        pump: StreamPump,
    ) -> None:
        self._stop = stop
        #: Bound addresses, e.g. ``["127.0.0.1:8080", "[::1]:8080", "unix:/run/c.sock"]``.
        self.addresses: list[str] = list(server.addresses)
        self.router = router
        self.catalog = catalog
        self.metrics = metrics
        #: In-process mock upstreams of ``type: mock`` backends, by backend name.
        self.mocks: dict[str, MockUpstream] = fleet.mocks
        #: The config in force, its versions, and changing it (:meth:`reload`, ``propose``).
        self.reconfigurer = reconfigurer
        #: The backends in service and those draining after a change.
        self.fleet = fleet
        #: The admin API (``admin.set_key_check`` plugs client keys with the admin scope in).
        self.admin = admin
        #: The stream pump of pass-through streams (``pump.pumped``: how many it took).
        self.pump = pump
        self._server = server
        #: The client-side TLS context (``server.tls``), None without TLS.
        self.ssl_context: ssl.SSLContext | None = getattr(server, "ssl_context", None)

    def reload_tls(self) -> bool:
        """Re-read ``server.tls``'s certificate, key and client CA files: new connections
        use them, open ones keep theirs. False when TLS is off. Raises ``ConfigError`` for
        a missing or bad file, and then nothing changed (the files are proven first)."""
        context = self.ssl_context
        tls = self.config.server.tls
        if context is None or tls.cert_file is None:
            return False
        try:
            reload_server_context(context, tls.cert_file, tls.key_file, tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load: {exc}", path="server.tls") from None
        log.info("server.tls reloaded from %s", tls.cert_file)
        return True

    @property
    def config(self) -> Config:
        """The config in force (the latest version: reloads change it)."""
        return self.reconfigurer.current

    async def reload(self) -> Outcome:
        """Read the config file again and apply it, as ``SIGHUP`` does (ConfigError when
        it is invalid: nothing changes)."""
        return await self.reconfigurer.reload(source="reload", who="embedding program")

    @property
    def backends(self) -> dict[str, BackendActor]:
        return self.router.backends

    @property
    def url(self) -> str:
        """``http://host:port`` of the first TCP address (``https`` with ``server.tls``;
        handy for clients and tests)."""
        for address in self.addresses:
            if not address.startswith("unix:"):
                host, _, port = address.rpartition(":")
                if host == "0.0.0.0":
                    host = "127.0.0.1"
                elif host == "[::]":
                    host = "[::1]"
                scheme = "https" if self.ssl_context is not None else "http"
                return f"{scheme}://{host}:{port}"
        raise LookupError("the router listens on Unix sockets only")

    def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (up to ``shutdown_timeout``), exit.
        Streams still running near the deadline end with an error event before the cut."""
        self._stop.drain()

    def abort(self) -> None:
        """Stop now: running streams end with an error event (within a second), then
        every connection is cut (a plain request's client sees the connection close).
        Cancelling the surrounding nursery drains instead; this does not."""
        self._stop.abort()


async def serve(
    config: Config,
    *,
    config_file: str | os.PathLike[str] | None = None,
    hooks: ReloadHooks | None = None,
    task_status: trio.TaskStatus[RouterHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one router until it is shut down or cancelled (both drain gracefully).

    With ``nursery.start`` it returns a :class:`RouterHandle` once every address is bound
    and the first health and discovery round is in.

    ``config_file`` is the file a reload reads again (``SIGHUP``, ``hot_reload``,
    ``POST /admin/config/reload``); by default the file ``config`` was loaded from, if any.
    """
    server_cfg = config.server
    tls = server_tls_context(config)  # a bad certificate is refused before anything binds
    # Bind first: a taken port is a plain OSError before anything else has started.
    listeners = await open_listeners(server_cfg.bind_address, socket_mode=server_cfg.socket_mode)
    first = first_version(config)
    try:
        await _serve(first, listeners, task_status, None, _config_file(config, config_file),
                     hooks, MemoryVersions(first), tls)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


def _config_file(config: Config, given: str | os.PathLike[str] | None) -> str | None:
    if given is not None:
        return os.path.abspath(given)
    return os.path.abspath(config.source) if os.path.isfile(config.source) else None


async def serve_worker(
    config: Config,
    worker: WorkerEnvironment,
    *,
    config_file: str | os.PathLike[str] | None = None,
    hooks: ReloadHooks | None = None,
    task_status: trio.TaskStatus[RouterHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``serve`` as one of ``server.workers`` processes (see ``continuum.actors.workers``): TCP
    addresses joined with SO_REUSEPORT, Unix ones inherited, metrics summed over workers."""
    tls = server_tls_context(config)
    listeners = await open_listeners(
        worker.bind, socket_mode=config.server.socket_mode, reuse_port=True,
        inherited=worker.inherited,
    )
    # The workers share their config versions: the first one up writes version 1, and a
    # worker (re)started later runs the latest version, not the file.
    store = SharedVersions(worker.metrics_dir)
    async with store.exclusive():
        if not store.exists():
            store.append(first_version(config))
    try:
        await _serve(store.latest(), listeners, task_status, worker,
                     _config_file(config, config_file), hooks, store, tls)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


def server_tls_context(config: Config) -> ssl.SSLContext | None:
    """The client-side TLS context of ``server.tls`` (None when it has no ``cert_file``);
    a file that does not load is a ``ConfigError``, and so is a front whose optional
    packages are not installed."""
    server = config.server
    if server.frontend == "hypercorn" and importlib.util.find_spec("hypercorn") is None:
        raise ConfigError("hypercorn is not installed: pip install 'trio-continuum[hypercorn]'",
                          source=config.source, path="server.frontend")
    if server.http3 and importlib.util.find_spec("aioquic") is None:
        raise ConfigError("HTTP/3 needs aioquic: pip install 'trio-continuum[http3]'",
                          source=config.source, path="server.http3")
    tls = config.server.tls
    if tls.cert_file is None:
        return None
    alpn = ("h2", "http/1.1") if config.server.frontend == "hypercorn" else ("http/1.1",)
    try:
        return make_server_context(tls.cert_file, tls.key_file, tls.client_ca_file,
                                   tls.min_version, alpn)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load: {exc}", source=config.source,
                          path="server.tls") from None


def _asgi_front(
    config: Config, listeners: list[trio.SocketListener], ingress: Ingress, limits: HTTPLimits,
    timer_resolution: float, tls: ssl.SSLContext | None, unlink_unix: bool,
    embed: AsgiFront | None,
) -> Front:
    """The ASGI front: the router's handler as an ASGI app (``embed``, when an ASGI server
    outside runs it: ``continuum.asgi``), or served by hypercorn on ``listeners``."""
    from ..net.server.asgi import AsgiFront

    if embed is not None:
        embed.attach(ingress.handle, limits, refuse=ingress.refuse,
                     timer_resolution=timer_resolution)
        return _EmbeddedFront(embed, config.server.shutdown_timeout)
    from ..net.server.hypercorn_front import HypercornFront

    server_cfg = config.server
    app = AsgiFront(ingress.handle, limits, render_error=render_error, refuse=ingress.refuse,
                    timer_resolution=timer_resolution)
    return HypercornFront(
        listeners, app, shutdown_timeout=server_cfg.shutdown_timeout,
        keepalive_timeout=server_cfg.keepalive_timeout,
        max_header_size=server_cfg.max_header_size,
        handshake_timeout=server_cfg.request_read_timeout,
        websocket_max_message_size=config.realtime.max_message_size,
        ssl_context=tls, cert_file=server_cfg.tls.cert_file, key_file=server_cfg.tls.key_file,
        http3=server_cfg.http3, unlink_unix=unlink_unix,
    )


@final
class _EmbeddedFront:
    """The front of a router inside another ASGI server: nothing to accept; ``run`` sweeps
    the requests' timers until drained and the last request has ended (at most
    ``shutdown_timeout`` later)."""

    def __init__(self, app: AsgiFront, shutdown_timeout: float) -> None:
        self.app = app
        self.addresses: list[str] = []
        self.connections = app.connections
        self._timeout = shutdown_timeout
        self._drained = trio.Event()

    def drain(self) -> None:
        self.app.drain()
        self._drained.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.app.run)
            await self._drained.wait()
            with trio.move_on_after(self._timeout):
                await self.app.wait_idle()
            nursery.cancel_scope.cancel()


async def serve_asgi(
    config: Config,
    app: AsgiFront,
    *,
    task_status: trio.TaskStatus[RouterHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one router whose clients come through ``app``, an ASGI application run by an ASGI
    server outside (``continuum.asgi``): no listener of its own; otherwise as ``serve``."""
    first = first_version(config)
    await _serve(first, [], task_status, None, _config_file(config, None), None,
                 MemoryVersions(first), None, app)


async def _serve_worker_socket(sink: MetricsSink, reconfigurer: Reconfigurer,
                               path: str) -> None:
    """A worker's private socket: its own metrics, read by its siblings' /metrics, and
    ``POST /config/sync``, by which a sibling that made a config version has us apply it."""

    async def handler(request: Request, conn: ServerConnection) -> None:
        if request.path == SYNC_PATH and request.method == "POST":
            version = await reconfigurer.sync()
            await conn.send_response(200, JSON_HEADERS, b'{"version":%d}' % version)
            return
        body = await sink.render_local()
        await conn.send_response(200, [(b"content-type", b"text/plain; version=0.0.4")], body)

    listeners = await open_listeners([f"unix:{path}"])
    await HTTPServer(listeners, handler, HTTPLimits(), shutdown_timeout=1.0).run()


async def _serve(
    start: ConfigVersion,
    listeners: list[trio.SocketListener],
    task_status: trio.TaskStatus[RouterHandle],
    worker: WorkerEnvironment | None,
    config_file: str | None,
    hooks: ReloadHooks | None,
    store: VersionStore,
    tls: ssl.SSLContext | None = None,
    embed: AsgiFront | None = None,
) -> None:
    config = start.config
    server_cfg = config.server
    async with trio.open_nursery() as root:
        fleet = Fleet(root, supervise)
        backends = await fleet.open_all(config)
        router = Router(backends, config)
        control_send, control_receive = trio.open_memory_channel[ControlMessage](_CONTROL_BUFFER)
        catalog = ModelCatalog(router, backends, config.cache.model_cache_ttl,
                            config.health_checks.timeout, control_send)
        prober = HealthProber(backends, config.health_checks, control_send)
        dedup_cfg = config.cache.deduplication
        dedup = Deduplicator(dedup_cfg.ttl) if dedup_cfg.enabled else None
        connections: list[Front] = []
        sink = MetricsSink(Metrics(), backends, lambda m: bool(router.candidates(m)), catalog,
                           lambda: len(connections[0].connections) if connections else 0,
                           dedup)
        redis = redis_client(config)
        # Built even when nothing is checked yet (a reload may add keys or limits); the
        # request path sees it only while needed, so switched off it costs nothing.
        keeper = AccessControl(config, sink.metrics, redis)
        access = keeper if needed(config) else None
        proxy = Proxy(config, router, dedup, access)
        fronts = await build_fronts(config, proxy, router)
        limits = HTTPLimits(
            max_header_size=server_cfg.max_header_size,
            max_body_size=server_cfg.max_request_body_size,
            request_read_timeout=server_cfg.request_read_timeout,
            keepalive_timeout=server_cfg.keepalive_timeout,
            park_after=server_cfg.idle_park_after,
            write_timeout=server_cfg.write_timeout,
            stream_paths=frozenset(p.encode() for p in fronts.stream_paths),
            max_upload_size=server_cfg.max_upload_size,
        )
        ingress = Ingress(config, router, catalog, sink, proxy, fronts.routes,
                          fronts.matches, access=access)
        realtime: RealtimeGateway | None = None
        if config.realtime.enabled:
            realtime = RealtimeGateway(config, router, sink, ingress.admit_realtime)
            ingress.add_routes(realtime.routes())
        shortest = min(limits.keepalive_timeout, limits.request_read_timeout,
                       config.request.timeout, config.request.idle_timeout)
        server: Front
        if embed is not None or server_cfg.frontend == "hypercorn":
            server = _asgi_front(config, listeners, ingress, limits, shortest / 10, tls,
                                 worker is None, embed)
        else:
            server = HTTPServer(listeners, ingress.handle, limits,
                                shutdown_timeout=server_cfg.shutdown_timeout,
                                render_error=render_error, refuse=ingress.refuse,
                                timer_resolution=shortest / 10,
                                unlink_unix=worker is None,
                                upgrade_paths=frozenset(realtime.routes()) if realtime else
                                frozenset(), ssl_context=tls)
        if worker is not None:
            sink.gather = partial(gather_metrics, worker)
        connections.append(server)

        # The first round (protocols, probes, model lists, pre-warmed connections) is
        # applied as each answer arrives, so the table is complete when we report ready.
        # The rate limits' Redis is connected meanwhile.
        fleet.attach(router, prober, catalog, sink)
        async with trio.open_nursery() as first:
            if redis is not None and keeper.plan is not None:
                first.start_soon(_first_redis_call, redis)
            await fleet.warm_up(backends, config)

        root.start_soon(supervise, "router", lambda: router.run(control_receive))
        root.start_soon(supervise, "metrics", sink.run)
        root.start_soon(supervise, "health", prober.run)
        root.start_soon(supervise, "catalog", catalog.run)
        root.start_soon(supervise, "client-watch", ingress.proxy.clients.run)
        root.start_soon(supervise, "stream-pump", ingress.proxy.pump.run)
        fleet.start()
        root.start_soon(supervise, "rate-limiter", keeper.run)  # settles (Redis) or sweeps
        for name, task in fronts.tasks:
            root.start_soon(supervise, name, task)
        reconfigurer = Reconfigurer(
            store, start, config_file=config_file, hooks=hooks,
            notify=None if worker is None else partial(notify_siblings, worker))
        register_sections(reconfigurer, fleet=fleet, router=router, proxy=ingress.proxy,
                          ingress=ingress, catalog=catalog, sink=sink, dedup=dedup,
                          access=keeper, realtime=realtime)
        root.start_soon(supervise, "hot-reload", reconfigurer.watch)
        if worker is not None:
            root.start_soon(_serve_worker_socket, sink, reconfigurer, worker.metrics_socket())
            if isinstance(store, SharedVersions):
                root.start_soon(supervise, "config-follow",
                                partial(reconfigurer.follow, store.stamp))
        admin = AdminAPI(reconfigurer, fleet, key_check=keeper.admin_key,
                         worker=None if worker is None else worker.index)
        if config.admin.bind_address is None:
            ingress.mount(ADMIN_PREFIX, admin.handle, admin_label)
        elif worker is None or worker.index == 0:  # one listener; the workers share versions
            await root.start(partial(serve_admin, admin, config.admin.bind_address,
                                     ingress.admin_health,
                                     shutdown_timeout=server_cfg.shutdown_timeout))

        front = trio.CancelScope(shield=True)  # drains even when the caller is cancelled
        stop = _Stop(server, ingress.proxy, front, server_cfg.shutdown_timeout, realtime)
        handle = RouterHandle(server, router, catalog, sink, stop, reconfigurer, fleet, admin,
                              ingress.proxy.pump)
        reconfigurer.add_reload_hook(partial(_reload_tls, handle))
        log_startup_summary(config, server.addresses, router,
                            None if worker is None else worker.index)
        metrics_cfg = config.metrics
        if metrics_cfg.enabled and metrics_cfg.bind_address is not None and (
            worker is None or worker.index == 0  # one listener; /metrics sums all workers
        ):
            await root.start(partial(serve_metrics, sink, metrics_cfg,
                                     shutdown_timeout=server_cfg.shutdown_timeout))
        task_status.started(handle)
        try:
            async with trio.open_nursery() as watcher:
                watcher.start_soon(_drain_when_cancelled, stop)
                with front:
                    async with trio.open_nursery() as serving:
                        stop.nursery = serving
                        await server.run()
                        stop.nursery = None
                        serving.cancel_scope.cancel()
                watcher.cancel_scope.cancel()
        finally:
            fleet.close()
            ingress.proxy.tracing.shutdown()
            await fronts.aclose()
            if redis is not None:
                with trio.CancelScope(shield=True):
                    await redis.aclose()
            root.cancel_scope.cancel()


def _reload_tls(handle: RouterHandle) -> None:
    """A reload hook (``SIGHUP``, the file watcher, ``POST /admin/config/reload``): read the
    ``server.tls`` files again, so a renewed certificate is served without a restart. A file
    that does not load is logged and the certificate in use stays."""
    try:
        handle.reload_tls()
    except ConfigError as exc:
        log.error("server.tls not reloaded (the certificate in use stays): %s", exc)


async def _first_redis_call(redis: RedisClient) -> None:
    """Connect to the rate limits' Redis before serving (its scripts load on connect), so
    the first requests pay no connect; a Redis that does not answer is logged, not fatal:
    requests then follow ``on_error`` until it does."""
    try:
        with trio.move_on_after(STARTUP_PROBE_BUDGET):
            await redis.execute("PING")
    except RedisError as exc:
        log.warning("rate limits: Redis at %s does not answer at start (%s); requests follow "
                    "rate_limiting.redis.on_error until it does", redis.options.address, exc)


async def _drain_when_cancelled(stop: _Stop) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.drain()
