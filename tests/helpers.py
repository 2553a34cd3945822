"""Shared test helpers: real routers and mock upstreams on ephemeral loopback ports."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import trio

from continuum import RouterHandle, config_from_dict, serve
from continuum.config import MockConfig
from continuum.mock import MockUpstream, serve_mock
from continuum.net.server.connection import HTTPLimits
from continuum.net.server.listeners import HTTPServer, open_listeners


async def start_mock(
    nursery: trio.Nursery,
    models: Sequence[str] = ("mock-model",),
    config: MockConfig | None = None,
    *,
    name: str = "mock",
    seed: int | None = 0,
) -> tuple[MockUpstream, str]:
    """A mock upstream on 127.0.0.1:<ephemeral>; returns it and its base URL."""
    upstream = MockUpstream(config, models, name=name, seed=seed)
    address = await nursery.start(serve_mock, upstream)
    return upstream, f"http://{address}"


def router_config(
    backends: Sequence[Mapping[str, Any]], **sections: Mapping[str, Any]
) -> dict[str, Any]:
    """A config dict bound to 127.0.0.1:0 with health checks off unless given."""
    data: dict[str, Any] = {
        "server": {"bind_address": "127.0.0.1:0", "shutdown_timeout": 5},
        "health_checks": {"enabled": False},
        "backends": list(backends),
    }
    for key, value in sections.items():
        base = data.get(key, {})
        data[key] = {**base, **value} if isinstance(base, dict) else value
    return data


#: The front ``start_router`` gives a router whose config names none (``server.frontend``):
#: the end-to-end suites run against both (``tests/e2e/conftest.py``).
FRONT: ContextVar[str] = ContextVar("FRONT", default="native")


async def start_router(nursery: trio.Nursery, data: Mapping[str, Any]) -> RouterHandle:
    """Start a router from a config dict; returns its handle once it is listening."""
    server = dict(data.get("server", {}))
    if "frontend" not in server and FRONT.get() != "native":
        server["frontend"] = FRONT.get()
        data = {**data, "server": server}
    handle: RouterHandle = await nursery.start(serve, config_from_dict(data, source="<test>"))
    return handle


async def _close_when_cancelled(sock: socket.socket) -> None:
    try:
        await trio.sleep_forever()
    finally:
        sock.close()


def _hold_port(nursery: trio.Nursery) -> tuple[socket.socket, int]:
    """A loopback port reserved until ``nursery`` ends: bound, never listening (so
    connecting to it is refused), and with SO_REUSEPORT so a listener of ours may join it.

    A port that was merely bound and closed again could be taken meanwhile by any socket on
    the machine (another test's listener, an outgoing connection's ephemeral port).
    """
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    nursery.start_soon(_close_when_cancelled, holder)
    port: int = holder.getsockname()[1]
    return holder, port


def refused_url(nursery: trio.Nursery) -> str:
    """A URL where connecting is refused for as long as ``nursery`` runs."""
    return f"http://127.0.0.1:{_hold_port(nursery)[1]}"


class KillableMock:
    """A mock upstream that can be killed (listener and connections closed, so connecting
    is refused) and started again on the same port, which stays reserved while it is down.

    ``kill()`` returns once the old server has closed, so what follows never depends on
    how fast the cancellation ran.
    """

    def __init__(self, nursery: trio.Nursery, upstream: MockUpstream) -> None:
        self.nursery = nursery
        self.upstream = upstream
        _, self.port = _hold_port(nursery)
        self.url = f"http://127.0.0.1:{self.port}"
        self._scope: trio.CancelScope | None = None
        self._stopped: trio.Event | None = None

    async def start(self) -> None:
        assert self._scope is None, "already running"
        listeners = await open_listeners([f"127.0.0.1:{self.port}"], reuse_port=True)
        server = HTTPServer(listeners, self.upstream.handle, HTTPLimits(), shutdown_timeout=0.0)
        scope = trio.CancelScope()  # one per run: a CancelScope serves a single `with`
        stopped = trio.Event()

        async def run() -> None:
            try:
                with scope:
                    await server.run()
            finally:
                stopped.set()

        self.nursery.start_soon(run)
        self._scope, self._stopped = scope, stopped

    async def kill(self) -> None:
        assert self._scope is not None and self._stopped is not None, "not running"
        self._scope.cancel()
        await self._stopped.wait()
        self._scope = self._stopped = None


async def start_killable_mock(
    nursery: trio.Nursery,
    models: Sequence[str] = ("mock-model",),
    config: MockConfig | None = None,
    *,
    name: str = "killable",
) -> KillableMock:
    """A running :class:`KillableMock`."""
    mock = KillableMock(nursery, MockUpstream(config, models, name=name, seed=0))
    await mock.start()
    return mock
