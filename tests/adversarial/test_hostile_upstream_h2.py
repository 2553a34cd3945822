"""Hostile HTTP/2 upstreams (h2c, ``http2: always``): stream resets before and after the
head, refused streams, GOAWAY before the head, oversized and never-ending header blocks,
hangs, a dropped connection mid-body, and a server that answers the preface with garbage.

As in test_hostile_upstream.py: one backend per case behind one router process, and for a
plain and a streamed request the client's answer, the backend's failure accounting, a
second client served promptly during the attack, and RSS/fd bounds.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
import pytest
import trio
from harness import (
    RouterProcess,
    ThreadedUpstream,
    chat_completion,
    router_config,
    sse_chunk_event,
)
from hyperframe.frame import ContinuationFrame, HeadersFrame
from upstream_cases import (
    BAD_GATEWAY,
    HEAD_TOO_LARGE,
    IDLE_TIMEOUT,
    OK,
    REQUEST_TIMEOUT,
    TIMEOUT,
    Case,
    Expect,
    attack,
)

# -- a scripted h2c server ----------------------------------------------------------------------


class H2Conn:
    """One server-side HTTP/2 connection, as the case handlers see it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.lock = trio.Lock()
        self.requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}

    async def flush(self, extra: bytes = b"") -> None:
        async with self.lock:
            data = self.h2.data_to_send() + extra
            if data:
                await self.stream.send_all(data)

    async def head(self, sid: int, streamed: bool) -> None:
        kind = b"text/event-stream" if streamed else b"application/json"
        self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", kind)])
        await self.flush()

    async def data(self, sid: int, data: bytes, end: bool = False) -> None:
        self.h2.send_data(sid, data, end_stream=end)
        await self.flush()

    async def reset(self, sid: int, code: h2.errors.ErrorCodes) -> None:
        self.h2.reset_stream(sid, code)
        await self.flush()

    async def hang(self) -> None:
        await trio.sleep_forever()  # the connection's reader notices the router leaving


Handler = Callable[[H2Conn, int, str, bool], Awaitable[None]]


class H2Upstream:
    """h2c on 127.0.0.1:<ephemeral>; each request is answered by ``handlers[model]``. A
    second listener (``garbage_url``) answers the HTTP/2 preface with garbage."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.url = ""
        self.garbage_url = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        main = await trio.open_tcp_listeners(0, host="127.0.0.1")
        junk = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{main[0].socket.getsockname()[1]}"
        self.garbage_url = f"http://127.0.0.1:{junk[0].socket.getsockname()[1]}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve_h2, main)
            nursery.start_soon(trio.serve_listeners, self._serve_garbage, junk)
            task_status.started(self.url)

    async def _serve_garbage(self, stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\x01garbage" * 8)
        await trio.aclose_forcefully(stream)

    async def _serve_h2(self, stream: trio.SocketStream) -> None:
        conn = H2Conn(stream)
        try:
            conn.h2.initiate_connection()
            await conn.flush()
            async with trio.open_nursery() as nursery:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    try:
                        events = conn.h2.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        break
                    for event in events:
                        self._on_event(conn, event, nursery)
                    await conn.flush()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a handler dropped the connection, or the router did
        finally:
            await trio.aclose_forcefully(stream)

    def _on_event(self, conn: H2Conn, event: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(event, h2.events.RequestReceived):
            conn.requests[event.stream_id] = (
                {bytes(k): bytes(v) for k, v in event.headers}, bytearray())
        elif isinstance(event, h2.events.DataReceived):
            if event.stream_id in conn.requests:
                conn.requests[event.stream_id][1].extend(event.data)
            conn.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id in conn.requests:
            _headers, body = conn.requests[event.stream_id]
            doc: dict[str, Any] = json.loads(body) if body else {}
            model = str(doc.get("model", ""))
            handler = self.handlers.get(model, answer)
            nursery.start_soon(self._answer, handler, conn, event.stream_id, model,
                               bool(doc.get("stream")))

    @staticmethod
    async def _answer(handler: Handler, conn: H2Conn, sid: int, model: str,
                      streamed: bool) -> None:
        with contextlib.suppress(h2.exceptions.H2Error, trio.BrokenResourceError,
                                 trio.ClosedResourceError):
            await handler(conn, sid, model, streamed)


async def answer(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    """A well-behaved answer (the model list, probes)."""
    if not model:
        await conn.head(sid, False)
        await conn.data(sid, b'{"object": "list", "data": []}', end=True)
    elif streamed:
        await conn.head(sid, True)
        await conn.data(sid, sse_chunk_event(model, "ok") + b"data: [DONE]\n\n", end=True)
    else:
        await conn.head(sid, False)
        await conn.data(sid, json.dumps(chat_completion(model, "slow")).encode(), end=True)


# -- the repertoire -----------------------------------------------------------------------------


async def reset_before_head(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    await conn.reset(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)


async def refused(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    await conn.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)


async def goaway_before_head(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    conn.h2.close_connection(last_stream_id=0)  # "nothing was processed": resent once
    await conn.flush()


async def reset_mid_body(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    await conn.head(sid, streamed)
    await conn.data(sid, sse_chunk_event(model, "hi") if streamed else b'{"id": ')
    await trio.sleep(0.05)
    await conn.reset(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)


async def dropped_mid_body(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    await conn.head(sid, streamed)
    await conn.data(sid, sse_chunk_event(model, "hi") if streamed else b'{"id": ')
    await trio.sleep(0.05)
    await conn.stream.aclose()


def _header_block(sid: int, size: int) -> list[bytes]:
    """A HEADERS frame and CONTINUATION frames carrying a ``size``-byte header, encoded
    without Huffman and never indexed (fast, and no shared HPACK table state)."""
    block = hpack.Encoder().encode(
        [hpack.NeverIndexedHeaderTuple(b":status", b"200"),
         hpack.NeverIndexedHeaderTuple(b"x-pad", b"p" * size)], huffman=False)
    pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    frames = []
    for index, piece in enumerate(pieces):
        frame = HeadersFrame(sid) if index == 0 else ContinuationFrame(sid)
        frame.data = piece
        if index == len(pieces) - 1:
            frame.flags.add("END_HEADERS")
        frames.append(frame.serialize())
    return frames


async def enormous_head(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    for frame in _header_block(sid, 200 << 10):  # 200 KiB in 13 frames, limit 64 KiB
        await conn.flush(frame)
    await conn.hang()


async def endless_head(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    first = HeadersFrame(sid)
    first.data = b"\x00" * 16384  # never END_HEADERS
    await conn.flush(first.serialize())
    more = ContinuationFrame(sid)
    more.data = b"\x00" * 16384
    for _ in range(4096):  # 64 MiB if nobody stopped it
        await conn.flush(more.serialize())


async def hang_before_head(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    await conn.hang()


async def hang_mid_body(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    await conn.head(sid, streamed)
    await conn.data(sid, sse_chunk_event(model, "hi") if streamed else b'{"id": ')
    await conn.hang()


async def drip_in_time(conn: H2Conn, sid: int, model: str, streamed: bool) -> None:
    data = (sse_chunk_event(model, "slow") + b"data: [DONE]\n\n" if streamed
            else json.dumps(chat_completion(model, "slow")).encode())
    await conn.head(sid, streamed)
    for i in range(0, len(data), 16):
        await conn.data(sid, data[i:i + 16])
        await trio.sleep(0.01)
    await conn.data(sid, b"", end=True)


CASES: dict[str, Case] = {
    "h2_reset_before_head": Case(reset_before_head, BAD_GATEWAY, BAD_GATEWAY),
    "h2_refused_stream": Case(refused, BAD_GATEWAY, BAD_GATEWAY),
    "h2_goaway_before_head": Case(goaway_before_head, BAD_GATEWAY, BAD_GATEWAY),
    "h2_reset_mid_body": Case(reset_mid_body, BAD_GATEWAY, Expect(200, "bad_gateway")),
    "h2_dropped_mid_body": Case(dropped_mid_body, BAD_GATEWAY, Expect(200, "bad_gateway")),
    "h2_enormous_head": Case(enormous_head, HEAD_TOO_LARGE, HEAD_TOO_LARGE),
    "h2_endless_head": Case(endless_head, HEAD_TOO_LARGE, HEAD_TOO_LARGE),
    "h2_hang_before_head": Case(hang_before_head, TIMEOUT, TIMEOUT),
    "h2_hang_mid_body": Case(hang_mid_body, TIMEOUT, Expect(200, "upstream_timeout")),
    "h2_drip_in_time": Case(drip_in_time, OK, OK),
}
GARBAGE = "h2_garbage_preface"


@pytest.fixture(scope="module")
def upstream() -> Iterator[H2Upstream]:
    handlers = {name: case.handler for name, case in CASES.items()}
    with ThreadedUpstream(H2Upstream(handlers)) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def router(upstream: H2Upstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProcess]:
    backends = [{"name": name, "url": upstream.url, "models": [name], "http2": "always"}
                for name in CASES]
    backends.append({"name": GARBAGE, "url": upstream.garbage_url, "models": [GARBAGE],
                     "http2": "always"})
    config = router_config(
        backends,
        request={"timeout": REQUEST_TIMEOUT, "idle_timeout": IDLE_TIMEOUT,
                 "streaming_timeout": 30, "max_retries": 0},
        http_client={"prewarm_connections": 0},
        circuit_breaker={"failure_threshold": 100000, "minimum_requests": 100000},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("hostile-h2")) as process:
        yield process


RUNS = [(name, stream) for name in [*sorted(CASES), GARBAGE] for stream in (False, True)]


@pytest.mark.parametrize(("name", "stream"), RUNS,
                         ids=[f"{n}-{'stream' if s else 'plain'}" for n, s in RUNS])
async def test_hostile_h2_upstream(router: RouterProcess, name: str, stream: bool) -> None:
    case = CASES.get(name)
    expect = BAD_GATEWAY if case is None else case.stream if stream else case.plain
    assert expect is not None
    await attack(router, name, stream, expect)
