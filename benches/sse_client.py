"""Streaming load client: thousands of concurrent SSE streams, every event timestamped.

One process, ``selectors`` (epoll on Linux), plain non-blocking sockets, no event-loop
framework, so it costs little per event. Each stream is a fresh connection that sends one
precomputed ``POST /v1/chat/completions`` with ``"stream": true`` and reads the chunked SSE
answer with ``httptools``; each SSE event (a block ended by a blank line) is stamped with
``time.perf_counter_ns()`` taken right after the ``recv`` that completed it.

Per stream it records:

* **TTFB**: from the request's ``send`` to the first SSE event;
* **gaps**: the inter-arrival time of consecutive *content* events (a chunk whose ``delta``
  carries non-empty ``content``: role-only, finish and usage chunks, and ``[DONE]``, are not
  paced by the upstream and are left out);
* whether it ended properly (HTTP 200, ``data: [DONE]``, complete chunked body).

A stream is **stalled** when one of its gaps exceeds ``stall_factor`` x the upstream's pacing,
or it did not end properly. ``open_idle`` opens N keep-alive connections (one ``GET`` each,
answered) and leaves them idle, for memory measurements.

Standalone on purpose: it must not import ``continuum``.

Usage: ``python benches/sse_client.py http://127.0.0.1:8080/v1/chat/completions -n 512
--frames 64 --interval 0.02``
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import selectors
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import httptools

from percentiles import nearest_rank

READ_SIZE: Final = 65536
CONTENT_RE: Final = re.compile(rb'"content":"[^"]')
DONE: Final = b"[DONE]"


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard


def stream_body(model: str, frames: int | None = None, interval: float | None = None) -> bytes:
    """An OpenAI chat request with ``"stream": true`` (and the bench upstream's pacing fields)."""
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": True,
    }
    if frames is not None:
        body["bench_frames"] = frames
    if interval is not None:
        body["bench_interval"] = interval
    return json.dumps(body, separators=(",", ":")).encode()


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    host_header = f"[{host}]" if ":" in host else host
    head = f"POST {path} HTTP/1.1\r\nHost: {host_header}:{port}\r\nUser-Agent: continuum-bench\r\n"
    head += "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@dataclass
class StreamResult:
    """All the streams of one run. Times in nanoseconds."""

    streams: int = 0
    ok: int = 0
    stalled: int = 0
    ttfb_ns: list[int] = field(default_factory=list)
    gaps_ns: list[int] = field(default_factory=list)
    max_gap_ns: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def summarize(res: StreamResult, interval_s: float) -> dict[str, float | int | dict[str, int]]:
    """TTFB and gap (inter-arrival minus pacing) percentiles in ms, counts."""
    pace_ns = interval_s * 1e9
    gaps = [g - pace_ns for g in res.gaps_ns]
    return {
        "streams": res.streams,
        "ok": res.ok,
        "stalled": res.stalled,
        "ttfb_p50_ms": nearest_rank(res.ttfb_ns, 50) / 1e6,
        "ttfb_p99_ms": nearest_rank(res.ttfb_ns, 99) / 1e6,
        "gap_p50_ms": nearest_rank(gaps, 50) / 1e6,
        "gap_p99_ms": nearest_rank(gaps, 99) / 1e6,
        "gap_max_ms": nearest_rank(gaps, 100) / 1e6,
        "gap_mean_ms": statistics.fmean(gaps) / 1e6 if gaps else float("nan"),
        "frames": len(res.gaps_ns) + res.ok,
        "errors": dict(res.errors),
        "elapsed_s": round(res.elapsed_s, 3),
    }


class _Stream:
    """One streaming request: its socket, parser callbacks and timestamps."""

    __slots__ = (
        "buf",
        "complete",
        "done",
        "gaps",
        "last",
        "now",
        "parser",
        "sock",
        "status",
        "t_first",
        "t_send",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.buf = b""
        self.now = 0
        self.t_send = 0
        self.t_first = 0
        self.last = 0
        self.gaps: list[int] = []
        self.status = 0
        self.done = False
        self.complete = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        buf = self.buf + body if self.buf else body
        if b"\n\n" not in buf:
            self.buf = buf
            return
        *events, self.buf = buf.split(b"\n\n")
        now = self.now
        for event in events:
            if not event.strip():
                continue
            if DONE in event and len(event) < 32:
                self.done = True
                continue
            if not self.t_first:
                self.t_first = now
            if CONTENT_RE.search(event):
                if self.last:
                    self.gaps.append(now - self.last)
                self.last = now

    def on_message_complete(self) -> None:
        self.complete = True


def _connect_nonblocking(family: socket.AddressFamily, sockaddr: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect_ex(sockaddr)
    return sock


def run_streams(
    host: str,
    port: int,
    request: bytes,
    streams: int,
    interval_s: float,
    *,
    timeout_s: float = 60.0,
    stall_factor: float = 10.0,
    open_batch: int = 256,
) -> StreamResult:
    """Run ``streams`` concurrent streaming requests to completion (or ``timeout_s``).

    Connections are opened ``open_batch`` per loop turn (non-blocking connects), so the events
    of streams already running are read on time while the rest connect.
    """
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    family, sockaddr = info[0], (str(info[4][0]), int(info[4][1]))
    res = StreamResult(streams=streams)
    sel = selectors.DefaultSelector()
    perf = time.perf_counter_ns
    stall_ns = int(stall_factor * interval_s * 1e9)
    to_open = streams
    live = 0
    t_start = perf()
    deadline = t_start + int(timeout_s * 1e9)

    def finish(st: _Stream, kind: str = "") -> None:
        nonlocal live
        sel.unregister(st.sock)
        st.sock.close()
        live -= 1
        if not kind:
            if st.status != 200:
                kind = f"status_{st.status}"
            elif not st.done:
                kind = "no_done"
        if st.t_first:
            res.ttfb_ns.append(st.t_first - st.t_send)
        res.gaps_ns.extend(st.gaps)
        max_gap = max(st.gaps, default=0)
        res.max_gap_ns.append(max_gap)
        if kind:
            res.error(kind)
            res.stalled += 1
        else:
            res.ok += 1
            if max_gap > stall_ns:
                res.stalled += 1

    while (to_open or live) and perf() < deadline:
        for _ in range(min(open_batch, to_open)):
            to_open -= 1
            try:
                sock = _connect_nonblocking(family, sockaddr)
            except OSError:
                res.error("connect")
                res.stalled += 1
                continue
            sel.register(sock, selectors.EVENT_WRITE, _Stream(sock))
            live += 1
        for key, mask in sel.select(0.05):
            st: _Stream = key.data
            if mask & selectors.EVENT_WRITE and not st.t_send:
                err = st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(st, "connect")
                    continue
                st.t_send = perf()
                try:
                    st.sock.sendall(request)  # a few hundred bytes: fits the socket buffer
                except OSError:
                    finish(st, "send")
                    continue
                sel.modify(st.sock, selectors.EVENT_READ, st)
                continue
            try:
                data = st.sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                finish(st, "reset")
                continue
            st.now = perf()
            if not data:
                finish(st, "" if st.complete else "closed")
                continue
            try:
                st.parser.feed_data(data)
            except httptools.HttpParserError:
                finish(st, "bad_response")
                continue
            if st.complete:
                finish(st)
    for key in list(sel.get_map().values()):
        finish(key.data, "timeout")
    sel.close()
    res.elapsed_s = (perf() - t_start) / 1e9
    return res


def open_idle(
    host: str, port: int, count: int, *, batch: int = 500, path: str = "/health"
) -> tuple[list[socket.socket], dict[str, int]]:
    """Open ``count`` keep-alive connections, one answered ``GET path`` each, left idle.

    Returns the open sockets (the caller closes them) and error counts.
    """
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    family, sockaddr = info[0], (str(info[4][0]), int(info[4][1]))
    host_header = f"[{host}]" if ":" in host else host
    request = f"GET {path} HTTP/1.1\r\nHost: {host_header}:{port}\r\n\r\n".encode()
    errors: dict[str, int] = {}
    opened: list[socket.socket] = []

    class _Idle:
        def __init__(self) -> None:
            self.complete = False
            self.status = 0
            self.parser = httptools.HttpResponseParser(self)

        def on_message_complete(self) -> None:
            self.complete = True
            self.status = self.parser.get_status_code()

    sel = selectors.DefaultSelector()
    remaining = count
    while remaining:
        n = min(batch, remaining)
        remaining -= n
        pending: dict[socket.socket, _Idle] = {}
        for _ in range(n):
            try:
                sock = _connect_nonblocking(family, sockaddr)
            except OSError:
                errors["connect"] = errors.get("connect", 0) + 1
                continue
            pending[sock] = _Idle()
            sel.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 10.0
        while pending and time.monotonic() < deadline:
            for key, mask in sel.select(0.1):
                sock = key.fileobj  # type: ignore[assignment]
                state = pending[sock]
                if mask & selectors.EVENT_WRITE:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        errors["connect"] = errors.get("connect", 0) + 1
                        sel.unregister(sock)
                        del pending[sock]
                        sock.close()
                        continue
                    sock.sendall(request)
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(READ_SIZE)
                    if data:
                        state.parser.feed_data(data)
                except (OSError, httptools.HttpParserError):
                    data = b""
                if not data or state.complete:
                    sel.unregister(sock)
                    del pending[sock]
                    if data and state.status == 200:
                        opened.append(sock)
                    else:
                        errors["failed"] = errors.get("failed", 0) + 1
                        sock.close()
        for sock in pending:
            errors["timeout"] = errors.get("timeout", 0) + 1
            sel.unregister(sock)
            sock.close()
    sel.close()
    return opened, errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url", help="e.g. http://127.0.0.1:8080/v1/chat/completions")
    parser.add_argument("-n", "--streams", type=int, default=64)
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--frames", type=int, default=64, help="bench upstream: events/stream")
    parser.add_argument("--interval", type=float, default=0.02, help="upstream pacing, seconds")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    if url.scheme != "http" or url.hostname is None:
        parser.error("only http://HOST:PORT/PATH URLs are supported")
    raise_nofile_limit()
    port = url.port or 80
    body = stream_body(args.model, args.frames, args.interval)
    request = build_request(url.hostname, port, url.path or "/", body, {})
    res = run_streams(
        url.hostname, port, request, args.streams, args.interval, timeout_s=args.timeout
    )
    json.dump(summarize(res, args.interval), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
