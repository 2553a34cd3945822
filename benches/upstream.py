"""Zero-latency OpenAI-shaped upstream for the benchmarks.

A bare trio + httptools HTTP/1.1 keep-alive server. Every response is precomputed bytes and
all the responses produced by one read are written with a single ``send_all`` (so pipelined
requests cost one write). It answers:

* ``POST /v1/chat/completions`` -- a fixed ``chat.completion`` JSON body (``Content-Length``);
  with ``"stream": true`` in the body, a short SSE stream (a few ``data: {chunk}`` events and
  ``data: [DONE]``) with chunked transfer encoding;
* ``GET /v1/models`` -- a model list containing ``bench-model``;
* ``GET /health`` -- ``{"status":"ok"}``;
* anything else -- an OpenAI-shaped 404.

Standalone on purpose: it must not import ``continuum``, so the baseline stays fixed.

Usage: ``python benches/upstream.py --port 8001 [--host 127.0.0.1]``
"""

from __future__ import annotations

import argparse
import sys
from typing import Final

import httptools
import msgspec
import trio

MODEL: Final = "bench-model"
READ_SIZE: Final = 65536


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    """A complete HTTP/1.1 response with a ``Content-Length`` body."""
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"Server: bench-upstream\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


def _json_response(status: str, obj: object) -> bytes:
    return _response(status, b"application/json", msgspec.json.encode(obj))


def _error(status: str, message: str, kind: str, code: str) -> bytes:
    err = {"message": message, "type": kind, "param": None, "code": code}
    return _json_response(status, {"error": err})


def _chat_completion() -> bytes:
    return _json_response(
        "200 OK",
        {
            "id": "chatcmpl-bench000000000000000000000001",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Hello! How can I help you today?",
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
        },
    )


def _chat_stream() -> bytes:
    """An SSE chat.completion.chunk stream, one HTTP chunk per event."""
    pieces = ["Hello", "!", " How can I", " help you", " today?"]
    deltas: list[dict[str, object]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": p} for p in pieces]
    events: list[bytes] = []
    for i, delta in enumerate(deltas):
        chunk = {
            "id": "chatcmpl-bench000000000000000000000002",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        }
        if i == len(deltas) - 1:
            last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
            chunk["choices"] = [last]
        events.append(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    return (
        b"HTTP/1.1 200 OK\r\n"
        b"Server: bench-upstream\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n" + body
    )


CHAT_COMPLETION: Final = _chat_completion()
CHAT_STREAM: Final = _chat_stream()
MODELS: Final = _json_response(
    "200 OK",
    {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 1_700_000_000, "owned_by": "bench"}],
    },
)
HEALTH: Final = _json_response("200 OK", {"status": "ok"})
NOT_FOUND: Final = _error("404 Not Found", "Unknown route", "invalid_request_error", "not_found")
BAD_JSON: Final = _error("400 Bad Request", "Body is not JSON", "invalid_request_error", "bad_json")
BAD_REQUEST_CLOSE: Final = _error(
    "400 Bad Request", "Malformed HTTP request", "invalid_request_error", "bad_http"
).replace(b"\r\n", b"\r\nConnection: close\r\n", 1)

GET_ROUTES: Final[dict[bytes, bytes]] = {
    b"/v1/models": MODELS,
    b"/health": HEALTH,
}


class _StreamFlag(msgspec.Struct):
    """The one field of a chat request the upstream looks at."""

    stream: bool = False


_decode_stream_flag = msgspec.json.Decoder(_StreamFlag).decode


def _chat_response(body: bytes) -> bytes:
    # Fast path: no ``"stream"`` key at all means no decode.
    if b'"stream"' not in body:
        return CHAT_COMPLETION
    try:
        return CHAT_STREAM if _decode_stream_flag(body).stream else CHAT_COMPLETION
    except msgspec.DecodeError:
        return BAD_JSON


class _Connection:
    """httptools request-parser callbacks for one client connection."""

    __slots__ = ("body", "close", "out", "parser", "url")

    def __init__(self) -> None:
        self.url = b""
        self.body: list[bytes] = []
        self.out: list[bytes] = []
        self.close = False
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.partition(b"?")[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            response = _chat_response(b"".join(self.body))
        elif method == b"GET":
            response = GET_ROUTES.get(path, NOT_FOUND)
        else:
            response = NOT_FOUND
        if not self.parser.should_keep_alive():
            response = response.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
            self.close = True
        self.out.append(response)
        self.url = b""
        self.body.clear()


async def handle(stream: trio.SocketStream) -> None:
    """Serve one keep-alive client connection until it closes."""
    conn = _Connection()
    feed = conn.parser.feed_data
    out = conn.out
    try:
        while not conn.close:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                break
            try:
                feed(data)
            except httptools.HttpParserError:
                out.append(BAD_REQUEST_CLOSE)
                conn.close = True
            if out:
                await stream.send_all(out[0] if len(out) == 1 else b"".join(out))
                out.clear()
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def serve(host: str, port: int) -> None:
    """Listen on ``host:port`` forever."""
    await trio.serve_tcp(handle, port, host=host, backlog=4096)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        trio.run(serve, args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
