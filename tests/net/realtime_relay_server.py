"""A small Realtime relay server for tests and the memory probe, assembled from
``continuum.net.websocket_relay`` the way the ingress will use it: accept TCP, parse the
request head with httptools (as the ingress does), refuse bad handshakes itself, write the head
back (``handshake_request``) and hand the connection to ``relay_upgrade`` with the upstream
target, the forwarded client headers and a backend key."""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools
import trio

from continuum.core.errors import openai_error_body
from continuum.core.realtime import (
    REALTIME_PATH,
    UsageTally,
    forwarded_headers,
    handshake_problem,
    parse_subprotocols,
    split_subprotocols,
    upstream_target,
)
from continuum.net.websocket_relay import (
    HandshakeFailed,
    RelaySettings,
    RelayStats,
    UpstreamConnectError,
    handshake_request,
    relay_upgrade,
)

Outcome = RelayStats | UpstreamConnectError | HandshakeFailed


class _Head:
    """httptools callbacks for one request head."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        self.complete = True


async def _answer(stream: trio.abc.Stream, status: int, message: str) -> None:
    body = openai_error_body(status, message)
    await stream.send_all(
        f"HTTP/1.1 {status} Refused\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
    )


@dataclass
class RelayServer:
    """A running relay to one upstream; what each session did, in order of ending."""

    upstream: str
    settings: RelaySettings
    backend_key: str = "backend-key"
    raise_in_observer: bool = False
    address: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    tallies: list[UsageTally] = field(default_factory=list)
    client_keys: list[str | None] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.address}/v1"

    @property
    def stats(self) -> list[RelayStats]:
        return [o for o in self.outcomes if isinstance(o, RelayStats)]

    async def handle(self, stream: trio.abc.Stream) -> None:
        async with stream:
            head = _Head()
            parser = httptools.HttpRequestParser(head)
            rest = b""
            while not head.complete:
                data = await stream.receive_some(65536)
                if not data:
                    return
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade as upgrade:
                    rest = data[upgrade.args[0]:]
                    break
            method = parser.get_method().decode()
            path, _, query = head.url.decode("latin-1").partition("?")
            if path != REALTIME_PATH:
                await _answer(stream, 404, f"No route {path}")
                return
            problem = handshake_problem(method, head.headers)
            if problem is not None:
                await _answer(stream, *problem)
                return
            key, _ = split_subprotocols(parse_subprotocols(head.headers))
            bearer = dict(head.headers).get(b"authorization", b"").removeprefix(b"Bearer ")
            self.client_keys.append(key or bearer.decode() or None)
            tally = UsageTally()
            observer = tally.observe
            if self.raise_in_observer:
                def observer(message: str) -> None:
                    raise RuntimeError("an observer that fails")
            upstream_headers = forwarded_headers(head.headers)
            upstream_headers.append((b"authorization", b"Bearer " + self.backend_key.encode()))
            outcome = await relay_upgrade(
                stream,
                handshake_request(method, head.url.decode("latin-1"), head.headers) + rest,
                upstream_target(self.upstream, query),
                headers=upstream_headers,
                settings=self.settings,
                observer=observer,
                refusal_body=openai_error_body,
            )
            self.tallies.append(tally)
            self.outcomes.append(outcome)


async def start_relay(
    nursery: trio.Nursery,
    upstream: str,
    settings: RelaySettings | None = None,
    *,
    host: str = "127.0.0.1",
    raise_in_observer: bool = False,
) -> RelayServer:
    """A relay on ``host``:<ephemeral> to ``upstream`` (an http(s):// base URL)."""
    server = RelayServer(upstream, settings or RelaySettings(), raise_in_observer=raise_in_observer)
    listeners = await trio.open_tcp_listeners(0, host=host)
    sockname = listeners[0].socket.getsockname()
    shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
    server.address = f"{shown}:{sockname[1]}"
    nursery.start_soon(trio.serve_listeners, server.handle, listeners)
    return server
