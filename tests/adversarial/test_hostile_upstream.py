"""Hostile HTTP/1.1 upstreams: resets at every stage, garbage, enormous and never-ending
heads, truncated chunked bodies, hangs, drips and oversized bodies, on real loopback sockets.

Each case is one backend of its own (so failure accounting and circuit breakers do not mix)
behind one router process, answered by a scripted raw upstream. For a plain and a streamed
request each case asserts what the client sees (a status in the OpenAI error shape, or a
200 stream ending with its SSE error event and a well-framed chunked body), that every
attempt counted as the backend's failure (``/admin/health``), that a second client was
served promptly during the attack, and that the router's RSS and open descriptors stayed
within bounds.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import trio
from harness import (
    SSE_HEAD,
    RouterProcess,
    ScriptedUpstream,
    ThreadedUpstream,
    UpstreamConn,
    UpstreamRequest,
    chat_completion,
    chunk,
    default_answer,
    json_answer,
    router_config,
    sse_chunk_event,
)
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

#: An upstream that keeps sending past the head limit (64 KiB) must be cut off long before
#: this many bytes.
ENDLESS_BOUND = 8 << 20
#: The largest plain answer the router reads whole (max(max_request_body_size, 64 MiB)).
RESPONSE_LIMIT = 64 << 20

Handler = Callable[[UpstreamRequest, UpstreamConn], Awaitable[None]]


# -- the hostile upstream's repertoire ----------------------------------------------------------


def _streamed(request: UpstreamRequest) -> bool:
    return bool((request.json() or {}).get("stream"))


def _event(request: UpstreamRequest, text: str = "hi") -> bytes:
    return sse_chunk_event(request.model, text)


def _plain_head(length: int | None = None, chunked: bool = False) -> bytes:
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {length}"
    return f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}\r\n\r\n".encode()


async def _until_closed(conn: UpstreamConn) -> None:
    """Hang: send nothing more, until the router closes the connection."""
    try:
        while await conn.stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    await conn.close()


async def reset_before_head(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.reset()


async def reset_mid_head(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: applic")
    await conn.reset()


async def reset_after_head(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(SSE_HEAD if _streamed(request) else _plain_head(100))
    await conn.reset()


async def reset_mid_body(request: UpstreamRequest, conn: UpstreamConn) -> None:
    if _streamed(request):
        await conn.send(SSE_HEAD + chunk(_event(request)))
    else:
        await conn.send(_plain_head(1000) + b'{"id": "x", ' + b" " * 400)
    await trio.sleep(0.05)
    await conn.reset()


async def reset_mid_chunk(request: UpstreamRequest, conn: UpstreamConn) -> None:
    event = _event(request) if _streamed(request) else json.dumps(
        chat_completion(request.model)).encode()
    head = SSE_HEAD if _streamed(request) else _plain_head(chunked=True)
    await conn.send(head + b"%x\r\n" % (len(event) + 100) + event)  # 100 bytes short
    await trio.sleep(0.05)
    await conn.reset()


async def reset_mid_event(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """A reset in the middle of an SSE event (or of a JSON body), inside a whole chunk."""
    if _streamed(request):
        event = _event(request)
        await conn.send(SSE_HEAD + chunk(event) + chunk(event[: len(event) // 2]))
    else:
        await conn.send(_plain_head(chunked=True) + chunk(b'{"id": "cut'))
    await trio.sleep(0.05)
    await conn.reset()


async def truncated_chunked(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """A clean close (FIN) in the middle of a chunked body: no terminating chunk."""
    if _streamed(request):
        await conn.send(SSE_HEAD + chunk(_event(request)) + chunk(b"data: {\"id\": \"cut"))
    else:
        await conn.send(_plain_head(chunked=True) + chunk(b'{"id": "cut'))
    await trio.sleep(0.05)
    await conn.close()


async def garbage(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await conn.send(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \r\n\r\n" * 4)
    await conn.close()


async def enormous_head(request: UpstreamRequest, conn: UpstreamConn) -> None:
    body = json.dumps(chat_completion(request.model)).encode()
    pad = b"x-pad: " + b"p" * (100 << 10) + b"\r\n"  # 100 KiB of header, over the 64 KiB limit
    await conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + pad +
                    b"content-length: %d\r\n\r\n" % len(body) + body)
    await _until_closed(conn)


@dataclass
class Sent:
    """Bytes an endless upstream managed to push before the router stopped it."""

    most: int = 0


ENDLESS = Sent()


async def endless_head(request: UpstreamRequest, conn: UpstreamConn) -> None:
    sent = 0
    piece = b"v" * 16384
    try:
        await conn.send(b"HTTP/1.1 200 OK\r\nx-endless: ")
        while sent < 256 << 20:
            await conn.send(piece)
            sent += len(piece)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        ENDLESS.most = max(ENDLESS.most, sent)
        await conn.close()


async def endless_trailer(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """A chunked body whose trailer section never ends (an unfinished trailer value)."""
    event = _event(request) if _streamed(request) else json.dumps(
        chat_completion(request.model)).encode()
    head = SSE_HEAD if _streamed(request) else _plain_head(chunked=True)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await conn.send(head + chunk(event) + b"0\r\nx-trailer: ")
        for _ in range(16384):  # 256 MiB if nobody stopped it
            await conn.send(b"t" * 16384)
    await conn.close()


async def hang_before_head(request: UpstreamRequest, conn: UpstreamConn) -> None:
    await _until_closed(conn)


async def hang_mid_body(request: UpstreamRequest, conn: UpstreamConn) -> None:
    if _streamed(request):
        await conn.send(SSE_HEAD + chunk(_event(request)))
    else:
        await conn.send(_plain_head(1000) + b'{"id": ')
    await _until_closed(conn)


async def _drip(conn: UpstreamConn, data: bytes, gap: float) -> None:
    for i in range(len(data)):
        await conn.send(data[i:i + 1])
        await trio.sleep(gap)


async def drip_in_time(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """The whole answer a byte at a time, within every timeout: it must get through."""
    if _streamed(request):
        data = (SSE_HEAD + chunk(_event(request, "slow")) + chunk(b"data: [DONE]\n\n") +
                b"0\r\n\r\n")
    else:
        data = json_answer(chat_completion(request.model, "slow"))
    await _drip(conn, data, 0.002)


async def drip_too_slow(request: UpstreamRequest, conn: UpstreamConn) -> None:
    """A head at 5 bytes a second: never complete within request.timeout or idle_timeout."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await _drip(conn, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" * 10, 0.2)
    await conn.close()


async def oversized_body(request: UpstreamRequest, conn: UpstreamConn) -> None:
    piece = b" " * 65536
    try:
        await conn.send(_plain_head(RESPONSE_LIMIT + (16 << 20)))
        for _ in range((RESPONSE_LIMIT >> 16) + 256):
            await conn.send(piece)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    await conn.close()


# -- the cases ------------------------------------------------------------------------------


CASES: dict[str, Case] = {
    "reset_before_head": Case(reset_before_head, BAD_GATEWAY, BAD_GATEWAY),
    "reset_mid_head": Case(reset_mid_head, BAD_GATEWAY, BAD_GATEWAY),
    # A stream's head goes to the client only with its first chunk: still retryable, 502.
    "reset_after_head": Case(reset_after_head, BAD_GATEWAY, BAD_GATEWAY),
    "reset_mid_body": Case(reset_mid_body, BAD_GATEWAY, Expect(200, "bad_gateway")),
    "reset_mid_chunk": Case(reset_mid_chunk, BAD_GATEWAY, Expect(200, "bad_gateway")),
    "reset_mid_event": Case(reset_mid_event, BAD_GATEWAY, Expect(200, "bad_gateway")),
    "truncated_chunked": Case(truncated_chunked, BAD_GATEWAY, Expect(200, "bad_gateway")),
    "garbage": Case(garbage, BAD_GATEWAY, BAD_GATEWAY),
    "enormous_head": Case(enormous_head, HEAD_TOO_LARGE, HEAD_TOO_LARGE),
    "endless_head": Case(endless_head, HEAD_TOO_LARGE, HEAD_TOO_LARGE),
    "endless_trailer": Case(endless_trailer, HEAD_TOO_LARGE, Expect(200, "bad_gateway")),
    # request.timeout for a plain answer; the first-byte timeout (idle_timeout) for a stream.
    "hang_before_head": Case(hang_before_head, TIMEOUT, TIMEOUT),
    "hang_mid_body": Case(hang_mid_body, TIMEOUT, Expect(200, "upstream_timeout")),
    "drip_in_time": Case(drip_in_time, OK, OK),
    "drip_too_slow": Case(drip_too_slow, TIMEOUT, TIMEOUT),
    # Read up to the 64 MiB limit (and no further): RSS may grow by about that much. (A
    # stream has no size limit: it is forwarded as it comes.)
    "oversized_body": Case(oversized_body, Expect(502, says=f"larger than {RESPONSE_LIMIT}"),
                           None, rss_mib=160.0),
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    handlers = {name: case.handler for name, case in CASES.items()}
    with ThreadedUpstream(ScriptedUpstream(handlers, default=default_answer)) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def router(upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[RouterProcess]:
    backends = [{"name": name, "url": upstream.url, "models": [name]} for name in CASES]
    config = router_config(
        backends,
        request={"timeout": REQUEST_TIMEOUT, "idle_timeout": IDLE_TIMEOUT,
                 "streaming_timeout": 30, "max_retries": 0},
        # Never open: every case counts its own failures, and repeats.
        circuit_breaker={"failure_threshold": 100000, "minimum_requests": 100000},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("hostile-upstream")) as process:
        yield process


RUNS = [(name, stream) for name, case in sorted(CASES.items())
        for stream in (False, True) if (case.stream if stream else case.plain) is not None]


@pytest.mark.parametrize(("name", "stream"), RUNS,
                         ids=[f"{n}-{'stream' if s else 'plain'}" for n, s in RUNS])
async def test_hostile_upstream(router: RouterProcess, name: str, stream: bool) -> None:
    case = CASES[name]
    expect = case.stream if stream else case.plain
    assert expect is not None
    await attack(router, name, stream, expect, case.rss_mib)
    if name == "endless_head":
        assert 0 < ENDLESS.most < ENDLESS_BOUND, ENDLESS.most
