"""Zero-latency OpenAI-shaped upstream for the benchmarks.

A bare trio + httptools HTTP/1.1 keep-alive server. Every response is precomputed bytes and
all the responses produced by one read are written with a single ``send_all`` (so pipelined
requests cost one write). It answers:

* ``POST /v1/chat/completions`` -- a fixed ``chat.completion`` JSON body (``Content-Length``);
  with ``"stream": true`` in the body, a short SSE stream (a few ``data: {chunk}`` events and
  ``data: [DONE]``) with chunked transfer encoding;
  with ``--stream-frames N`` (or ``"bench_frames": N`` in the request body) the stream is
  *paced*: N ``chat.completion.chunk`` events, the first one at once and event k at
  ``start + k * interval`` (``--stream-interval``, default 0.02 s, or ``"bench_interval"``
  seconds in the body), the last one followed by ``data: [DONE]``;
* ``GET /v1/models`` -- a model list containing ``bench-model``;
* ``GET /health`` -- ``{"status":"ok"}``;
* ``GET /bench/stats`` -- ``{"connections": N}``: connections accepted so far (what the
  ``concurrency`` scenario reads to count each proxy's upstream connects);
* anything else -- an OpenAI-shaped 404.

Standalone on purpose: it must not import ``continuum``, so the baseline stays fixed.

Paced frames are not one trio task and one timer per stream: a single ``Pacer`` task keeps
every stream's next due time in a heap, wakes at the earliest, and writes all the frames due
with one non-blocking ``os.write`` each (a frame is a few hundred bytes; the socket buffer always
has room unless the client stopped reading, and then the stream is dropped). Due times are
absolute (``start + k * interval``), so a late wake-up never drifts the schedule. That keeps
the upstream's cost per frame at a few microseconds, so 2,000 concurrent paced streams measure
the proxy, not this server.

Usage: ``python benches/upstream.py --port 8001 [--host 127.0.0.1]
[--stream-frames 64 --stream-interval 0.02] [--latency 0.5]``

``--latency S`` holds every answer S seconds (a slow model: one timer per request, on the
connection's own task), so many concurrent requests are in flight through a proxy at once.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import sys
from dataclasses import dataclass, field
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
    bench_frames: int | None = None
    bench_interval: float | None = None


_decode_stream_flag = msgspec.json.Decoder(_StreamFlag).decode

SSE_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: bench-upstream\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)
MAX_FRAMES: Final = 100_000


@dataclass(frozen=True)
class PacedStream:
    """A paced SSE answer: ``frames`` events ``interval`` seconds apart."""

    frames: int
    interval: float


#: Server-wide defaults for ``"stream": true`` requests (``--stream-frames/--stream-interval``).
PACING: dict[str, float] = {"frames": 0, "interval": 0.02, "latency": 0.0}
#: Counters served on ``GET /bench/stats``.
STATS: dict[str, int] = {"connections": 0}


def _frame(k: int, last: bool) -> bytes:
    """Paced event ``k`` as one HTTP chunk (plus ``[DONE]`` and the terminator when last)."""
    delta: dict[str, object] = {"content": f" t{k}"}
    if k == 0:
        delta["role"] = "assistant"
    finish = "stop" if last else None
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    chunk = {
        "id": "chatcmpl-bench000000000000000000000003",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [choice],
    }
    event = b"data: " + msgspec.json.encode(chunk) + b"\n\n"
    out = b"%x\r\n%s\r\n" % (len(event), event)
    if last:
        done = b"data: [DONE]\n\n"
        out += b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
    return out


_FRAMES_CACHE: dict[int, list[bytes]] = {}


def paced_frames(n: int) -> list[bytes]:
    """The ``n`` encoded frames of a paced stream (cached per ``n``)."""
    frames = _FRAMES_CACHE.get(n)
    if frames is None:
        frames = [_frame(k, k == n - 1) for k in range(n)]
        _FRAMES_CACHE[n] = frames
    return frames


def _chat_response(body: bytes) -> bytes | PacedStream:
    # Fast path: no ``"stream"`` key at all means no decode.
    if b'"stream"' not in body:
        return CHAT_COMPLETION
    try:
        flag = _decode_stream_flag(body)
    except msgspec.DecodeError:
        return BAD_JSON
    if not flag.stream:
        return CHAT_COMPLETION
    frames = int(PACING["frames"]) if flag.bench_frames is None else flag.bench_frames
    interval = PACING["interval"] if flag.bench_interval is None else flag.bench_interval
    if frames > 0:
        return PacedStream(min(frames, MAX_FRAMES), max(0.0, interval))
    return CHAT_STREAM


@dataclass(order=True)
class _Job:
    """One paced stream in progress; ordered by the due time of its next frame."""

    due: float
    seq: int
    fd: int = field(compare=False)
    start: float = field(compare=False)
    interval: float = field(compare=False)
    frames: list[bytes] = field(compare=False)
    next: int = field(compare=False, default=1)
    failed: bool = field(compare=False, default=False)
    done: trio.Event = field(compare=False, default_factory=trio.Event)


class Pacer:
    """Writes every paced stream's frames on time from one task (see the module docstring)."""

    def __init__(self) -> None:
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._wake = trio.Event()

    def add(self, fd: int, frames: list[bytes], interval: float) -> _Job:
        start = trio.current_time()
        job = _Job(start + interval, next(self._seq), fd, start, interval, frames)
        heapq.heappush(self._heap, job)
        if self._heap[0] is job:
            self._wake.set()
        return job

    async def run(self) -> None:
        heap = self._heap
        while True:
            if not heap:
                await self._wake.wait()
            else:
                with trio.move_on_at(heap[0].due):
                    await self._wake.wait()
            if self._wake.is_set():
                self._wake = trio.Event()
            now = trio.current_time()
            while heap and heap[0].due <= now:
                job = heap[0]
                try:
                    sent = os.write(job.fd, job.frames[job.next])
                    ok = sent == len(job.frames[job.next])
                except OSError:
                    ok = False
                job.next += 1
                if not ok or job.next >= len(job.frames):
                    heapq.heappop(heap)
                    job.failed = not ok
                    job.done.set()
                else:
                    job.due = job.start + job.next * job.interval
                    heapq.heapreplace(heap, job)
            await trio.lowlevel.checkpoint()


PACER: Pacer | None = None


async def _send_paced(stream: trio.SocketStream, paced: PacedStream) -> bool:
    """Head and first frame now, the rest through the pacer; False if the client fell behind."""
    frames = paced_frames(paced.frames)
    await stream.send_all(SSE_HEAD + frames[0])
    if len(frames) == 1:
        return True
    assert PACER is not None
    job = PACER.add(stream.socket.fileno(), frames, paced.interval)
    await job.done.wait()
    return not job.failed


class _Connection:
    """httptools request-parser callbacks for one client connection."""

    __slots__ = ("body", "close", "out", "parser", "url")

    def __init__(self) -> None:
        self.url = b""
        self.body: list[bytes] = []
        self.out: list[bytes | PacedStream] = []
        self.close = False
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.partition(b"?")[0]
        response: bytes | PacedStream
        if method == b"POST" and path == b"/v1/chat/completions":
            response = _chat_response(b"".join(self.body))
        elif method == b"GET" and path == b"/bench/stats":
            response = _json_response("200 OK", {"connections": STATS["connections"]})
        elif method == b"GET":
            response = GET_ROUTES.get(path, NOT_FOUND)
        else:
            response = NOT_FOUND
        if not self.parser.should_keep_alive():
            if isinstance(response, bytes):
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
    latency = PACING["latency"]
    STATS["connections"] += 1
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
                if latency > 0:
                    await trio.sleep(latency)
                if any(isinstance(r, PacedStream) for r in out):
                    if not await _send_mixed(stream, out):
                        break
                else:
                    await stream.send_all(b"".join(r for r in out if isinstance(r, bytes)))
                out.clear()
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def _send_mixed(stream: trio.SocketStream, out: list[bytes | PacedStream]) -> bool:
    """Answers of one read that include a paced stream, in order; False: close the connection."""
    pending: list[bytes] = []
    for r in out:
        if isinstance(r, bytes):
            pending.append(r)
            continue
        if pending:
            await stream.send_all(b"".join(pending))
            pending.clear()
        if not await _send_paced(stream, r):
            return False
    if pending:
        await stream.send_all(b"".join(pending))
    return True


async def serve(host: str, port: int) -> None:
    """Listen on ``host:port`` forever."""
    global PACER
    PACER = Pacer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(PACER.run)
        await trio.serve_tcp(handle, port, host=host, backlog=4096)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--stream-frames", type=int, default=0, help="pace every SSE answer: N events (0: off)"
    )
    parser.add_argument(
        "--stream-interval", type=float, default=0.02, help="seconds between paced events"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds every answer is held (0: none)"
    )
    args = parser.parse_args(argv)
    PACING["latency"] = args.latency
    PACING["frames"] = args.stream_frames
    PACING["interval"] = args.stream_interval
    try:
        trio.run(serve, args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
