"""Uploads handed to the handler at their head (``HTTPLimits.stream_paths``): the body is
read as it arrives, never whole, with its own size bound and per-wait timeout."""

from __future__ import annotations

import hashlib

import trio

from adversarial.harness import RawClient
from continuum.core.errors import render_error
from continuum.net.server.connection import HTTPLimits, ProtocolError, Request, ServerConnection
from continuum.net.server.listeners import HTTPServer, open_listeners

UPLOAD = b"/upload"
FORM = b"multipart/form-data; boundary=b"


class Recorder:
    """A handler that reads a streamed body and answers its size and digest."""

    def __init__(self, *, read: bool = True) -> None:
        self.read = read
        self.first_piece = trio.Event()
        self.requests: list[Request] = []
        self.pieces = 0
        self.errors: list[ProtocolError] = []

    async def __call__(self, request: Request, conn: ServerConnection) -> None:
        self.requests.append(request)
        stream = request.body_stream
        if stream is None:
            await conn.send_response(200, [], b"whole %d" % len(request.body))
            return
        if not self.read:
            await conn.send_response(400, [], b"refused unread")
            return
        digest = hashlib.sha256()
        size = 0
        try:
            while data := await stream.receive_some():
                self.pieces += 1
                self.first_piece.set()
                digest.update(data)
                size += len(data)
        except ProtocolError as exc:
            self.errors.append(exc)
            await conn.send_response(exc.status, [], exc.message.encode())
            return
        await conn.send_response(200, [], b"%d %s" % (size, digest.hexdigest().encode()))


async def serve(nursery: trio.Nursery, handler: Recorder, **limits: object) -> str:
    options: dict[str, object] = {"stream_paths": frozenset({UPLOAD}), "request_read_timeout": 5.0}
    options.update(limits)
    server = HTTPServer(await open_listeners(["127.0.0.1:0"]), handler,
                        HTTPLimits(**options),  # type: ignore[arg-type]
                        shutdown_timeout=0.0, render_error=render_error)
    nursery.start_soon(server.run)
    return server.addresses[0]


def head(length: int | None, *, path: bytes = UPLOAD, ctype: bytes = FORM,
         extra: bytes = b"") -> bytes:
    framing = b"transfer-encoding: chunked\r\n" if length is None else (
        b"content-length: %d\r\n" % length)
    return (b"POST " + path + b" HTTP/1.1\r\nhost: t\r\ncontent-type: " + ctype + b"\r\n"
            + framing + extra + b"\r\n")


async def test_the_handler_reads_while_the_client_is_still_sending(
        nursery: trio.Nursery) -> None:
    handler = Recorder()
    client = await RawClient.tcp(await serve(nursery, handler))
    body = bytes(range(256)) * 4096  # 1 MiB
    await client.send(head(len(body)) + body[:1000])
    with trio.fail_after(10):
        await handler.first_piece.wait()  # before the rest was even sent
        await client.send(body[1000:])
        response = await client.read_response()
    assert response.status == 200
    assert response.body == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    assert handler.pieces > 1


async def test_chunked_upload_then_a_pipelined_request(nursery: trio.Nursery) -> None:
    handler = Recorder()
    client = await RawClient.tcp(await serve(nursery, handler))
    chunks = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    plain = b"POST /other HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\nabc"
    with trio.fail_after(10):
        await client.send(head(None) + chunks + plain)
        first = await client.read_response()
        second = await client.read_response()
    assert first.body.startswith(b"11 " + hashlib.sha256(b"hello world").hexdigest()[:8].encode())
    assert second.body == b"whole 3"


async def test_json_and_other_paths_are_buffered(nursery: trio.Nursery) -> None:
    handler = Recorder()
    client = await RawClient.tcp(await serve(nursery, handler))
    with trio.fail_after(10):
        await client.send(head(2, ctype=b"application/json") + b"{}")
        assert (await client.read_response()).body == b"whole 2"
        await client.send(head(2, path=b"/elsewhere") + b"--")
        assert (await client.read_response()).body == b"whole 2"
    assert all(r.body_stream is None for r in handler.requests)


async def test_expect_continue_is_answered_when_the_handler_reads(
        nursery: trio.Nursery) -> None:
    handler = Recorder()
    client = await RawClient.tcp(await serve(nursery, handler))
    with trio.fail_after(10):
        await client.send(head(4, extra=b"expect: 100-continue\r\n"))
        interim = await client.read_head()
        assert interim.status == 100
        await client.send(b"abcd")
        assert (await client.read_response()).status == 200


async def test_declared_size_past_the_upload_limit_is_413_before_any_body(
        nursery: trio.Nursery) -> None:
    handler = Recorder()
    client = await RawClient.tcp(await serve(nursery, handler, max_upload_size=1000,
                                             max_body_size=100))
    with trio.fail_after(10):
        await client.send(head(1001))
        response = await client.read_response()
    assert response.status == 413
    assert handler.requests == []


async def test_upload_may_exceed_the_json_body_limit_but_not_its_own(
        nursery: trio.Nursery) -> None:
    handler = Recorder()
    address = await serve(nursery, handler, max_upload_size=5000, max_body_size=100)
    client = await RawClient.tcp(address)
    with trio.fail_after(10):
        await client.send(head(4000) + b"x" * 4000)
        assert (await client.read_response()).status == 200
        # chunked: the bound trips while the handler reads
        client = await RawClient.tcp(address)
        await client.send(head(None) + (b"1000\r\n" + b"y" * 4096 + b"\r\n") * 2)
        response = await client.read_response()
    assert response.status == 413
    assert handler.errors and handler.errors[-1].status == 413


async def test_a_stalled_upload_times_out_per_wait(nursery: trio.Nursery) -> None:
    handler = Recorder()
    client = await RawClient.tcp(await serve(nursery, handler, request_read_timeout=0.3))
    with trio.fail_after(10):
        await client.send(head(100) + b"x" * 10)
        response = await client.read_response()
    assert response.status == 408


async def test_client_leaving_mid_upload(nursery: trio.Nursery) -> None:
    handler = Recorder()
    client = await RawClient.tcp(await serve(nursery, handler))
    with trio.fail_after(10):
        await client.send(head(100) + b"x" * 10)
        await handler.first_piece.wait()
        await client.stream.aclose()
        while not handler.errors:
            await trio.sleep(0.01)
    assert handler.errors[0].status == 400


async def test_an_unread_upload_closes_the_connection_after_the_answer(
        nursery: trio.Nursery) -> None:
    handler = Recorder(read=False)
    client = await RawClient.tcp(await serve(nursery, handler))
    with trio.fail_after(10):
        await client.send(head(200_000) + b"x" * 50_000)
        response = await client.read_response()
        assert response.status == 400
        assert response.header("connection") == "close"
        while await client.fill():  # the router lingers, then closes
            pass
