"""A small, fast closed-loop HTTP/1.1 load generator (epoll, no event-loop framework).

``C`` keep-alive connections each send one precomputed request, wait for the whole response
(status line, headers and the full ``Content-Length`` or chunked body, found by
``httptools.HttpResponseParser``) and send the next one at once, for a duration or until a
request count is reached. Each request's latency is taken with ``time.perf_counter_ns`` from just
before ``send`` to the read that completed the response.

An error is a non-2xx status, an empty body, a reset / early close, a malformed response or a
request still unanswered after ``timeout_s``; a failed connection is reopened and carries on.

It runs plain non-blocking sockets on ``select.epoll`` so it costs far less CPU per request than
the servers it measures, and ``workers > 1`` splits the connections over that many processes
(results merged). Standalone on purpose: it must not import ``continuum``.

Usage: ``python benches/loadgen.py http://127.0.0.1:8080/v1/chat/completions -c 64 -d 5``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import select
import socket
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Final
from urllib.parse import urlsplit

import httptools

from percentiles import nearest_rank

READ_SIZE: Final = 262144
CHAT_BODY: Final = b'{"model":"bench-model","messages":[{"role":"user","content":"Hello"}]}'


def build_request(
    host: str,
    port: int,
    path: str,
    method: str = "POST",
    body: bytes = CHAT_BODY,
    content_type: str = "application/json",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The precomputed request bytes every connection sends (``headers``: more of them,
    e.g. an ``Authorization``)."""
    host_header = f"[{host}]" if ":" in host else host
    head = f"{method} {path} HTTP/1.1\r\nHost: {host_header}:{port}\r\n"
    head += "User-Agent: continuum-bench\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@dataclass
class LoadResult:
    """What one load run measured. Latencies are of successful (2xx) responses only."""

    ok: int = 0
    elapsed_s: float = 0.0
    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile (``q`` in 0..100) of the latencies, in milliseconds."""
        return nearest_rank(self.latencies_ns, q) / 1e6

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        """A JSON-friendly digest: req/s, p50/p90/p99/max in ms, counts and errors."""
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile_ms(50), 4),
            "p90_ms": round(self.percentile_ms(90), 4),
            "p99_ms": round(self.percentile_ms(99), 4),
            "max_ms": round(self.percentile_ms(100), 4),
            "ok": self.ok,
            "errors": self.error_count,
            "error_kinds": dict(self.errors),
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def merge(self, other: LoadResult) -> None:
        """Fold a concurrently-run worker's result into this one."""
        # Workers ran side by side: rates add, so keep total ok / common elapsed.
        rate = self.rps + other.rps
        self.ok += other.ok
        self.elapsed_s = self.ok / rate if rate > 0 else max(self.elapsed_s, other.elapsed_s)
        self.latencies_ns.extend(other.latencies_ns)
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n


class _Conn:
    """One client connection and its response-parser callbacks."""

    __slots__ = ("body_len", "completed", "fd", "keep_alive", "parser", "sock", "status", "t0")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = httptools.HttpResponseParser(self)
        self.t0 = 0
        self.status = 0
        self.body_len = 0
        self.completed = 0
        self.keep_alive = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)

    def on_message_complete(self) -> None:
        self.completed += 1
        # llhttp resets its flags once this callback returns: read keep-alive now.
        self.keep_alive = bool(self.parser.should_keep_alive())


def _open(family: socket.AddressFamily, sockaddr: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5.0)
        sock.connect(sockaddr)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def run_load(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    duration_s: float | None = None,
    total: int | None = None,
    timeout_s: float = 5.0,
    start_at: float | None = None,
) -> LoadResult:
    """Run a closed loop of ``concurrency`` connections for ``duration_s`` or ``total`` requests.

    With ``total``, the run ends when that many requests got an answer (or failed), or after
    ``timeout_s`` without progress. ``start_at`` (a ``time.monotonic()`` value) lets worker
    processes start together.
    """
    if (duration_s is None) == (total is None):
        raise ValueError("give exactly one of duration_s and total")
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    family, sockaddr = info[0], (str(info[4][0]), int(info[4][1]))
    result = LoadResult()
    errors = result.errors
    lat = result.latencies_ns
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    perf = time.perf_counter_ns

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    def open_conn() -> _Conn | None:
        try:
            c = _Conn(_open(family, sockaddr))
        except OSError:
            error("connect")
            return None
        conns[c.fd] = c
        ep.register(c.fd, select.EPOLLIN)
        return c

    def close_conn(c: _Conn) -> None:
        ep.unregister(c.fd)
        del conns[c.fd]
        c.sock.close()

    def send(c: _Conn) -> bool:
        c.t0 = perf()
        try:
            sent = c.sock.send(request)
            if sent < len(request):  # rare: fall back to a blocking write of the rest
                c.sock.setblocking(True)
                c.sock.sendall(request[sent:])
                c.sock.setblocking(False)
        except OSError:
            return False
        return True

    if start_at is not None:
        time.sleep(max(0.0, start_at - time.monotonic()))
    issued = 0
    limit = total if total is not None else 1 << 62
    for _ in range(min(concurrency, limit)):
        c = open_conn()
        if c is not None and send(c):
            issued += 1
        elif c is not None:
            error("send")
            close_conn(c)
    t_start = perf()
    stop_at = t_start + int((duration_s if duration_s is not None else 1e9) * 1e9)
    timeout_ns = int(timeout_s * 1e9)
    progress_at = t_start
    poll = ep.poll
    while conns:
        now = perf()
        if now >= stop_at:
            break
        if total is not None and now - progress_at > timeout_ns:
            break
        events = poll(0.05)
        for fd, _ in events:
            c = conns.get(fd)
            if c is None:
                continue
            try:
                data = c.sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = None
            failed = ""
            if not data:
                failed = "reset" if data is None else "closed"
            else:
                try:
                    c.parser.feed_data(data)
                except httptools.HttpParserError:
                    failed = "bad_response"
            if not failed and not c.completed:
                continue  # response not finished yet
            t1 = perf()
            progress_at = t1
            if failed or c.completed > 1:
                error(failed or "extra_response")
                close_conn(c)
                if issued < limit and t1 < stop_at:
                    nc = open_conn()
                    if nc is not None:
                        if send(nc):
                            issued += 1
                        else:
                            error("send")
                            close_conn(nc)
                continue
            if 200 <= c.status < 300 and c.body_len > 0:
                result.ok += 1
                lat.append(t1 - c.t0)
            else:
                error(f"status_{c.status}" if c.status >= 300 else "empty_body")
            c.completed = 0
            c.body_len = 0
            c.status = 0
            if issued < limit and t1 < stop_at:
                if not c.keep_alive:  # server said close: reconnect
                    close_conn(c)
                    if (nc := open_conn()) is None:
                        continue
                    c = nc
                if send(c):
                    issued += 1
                    continue
                error("send")
            close_conn(c)  # count reached (or send failed): this connection is done
    t_end = perf()
    # Every connection still open has a request in flight. With a request count, the run
    # gave up on it; with a duration, it is an error only if it is overdue.
    for c in list(conns.values()):
        if total is not None or t_end - c.t0 > timeout_ns:
            error("timeout")
        close_conn(c)
    ep.close()
    result.elapsed_s = (t_end - t_start) / 1e9
    return result


def _worker(
    out: Connection,
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    duration_s: float | None,
    total: int | None,
    timeout_s: float,
    start_at: float,
) -> None:
    res = run_load(host, port, request, concurrency, duration_s, total, timeout_s, start_at)
    out.send((res.ok, res.elapsed_s, res.latencies_ns.tobytes(), res.errors))
    out.close()


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def run_load_parallel(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    duration_s: float | None = None,
    total: int | None = None,
    timeout_s: float = 5.0,
    workers: int = 1,
) -> LoadResult:
    """``run_load`` split over ``workers`` processes (connections and count divided evenly)."""
    workers = max(1, min(workers, concurrency))
    if workers == 1:
        return run_load(host, port, request, concurrency, duration_s, total, timeout_s)
    ctx = multiprocessing.get_context("fork")
    start_at = time.monotonic() + 0.2
    conc = _split(concurrency, workers)
    totals: list[int | None] = [None] * workers
    if total is not None:
        totals = list(_split(total, workers))
    procs: list[tuple[BaseProcess, Connection]] = []
    try:
        for c, t in zip(conc, totals, strict=True):
            recv_end, send_end = ctx.Pipe(duplex=False)
            args = (send_end, host, port, request, c, duration_s, t, timeout_s, start_at)
            proc: BaseProcess = ctx.Process(target=_worker, args=args, daemon=True)
            proc.start()
            send_end.close()
            procs.append((proc, recv_end))
        merged: LoadResult | None = None
        for worker, recv_end in procs:
            try:
                ok, elapsed, lat_bytes, errs = recv_end.recv()
            except EOFError:
                part = LoadResult(errors={"worker_died": 1})
            else:
                lat = array("q")
                lat.frombytes(lat_bytes)
                part = LoadResult(ok=ok, elapsed_s=elapsed, latencies_ns=lat, errors=errs)
            worker.join()
            if merged is None:
                merged = part
            else:
                merged.merge(part)
        assert merged is not None
        return merged
    finally:
        for worker, recv_end in procs:
            recv_end.close()
            if worker.is_alive():
                worker.kill()
                worker.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url", help="e.g. http://127.0.0.1:8080/v1/chat/completions")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-d", "--duration", type=float, help="seconds (default 5)")
    group.add_argument("-n", "--requests", type=int, help="stop after this many requests")
    parser.add_argument("-w", "--workers", type=int, default=1, help="load processes")
    parser.add_argument("-X", "--method", default="POST")
    parser.add_argument("--body", default=CHAT_BODY.decode(), help="request body (POST)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    if url.scheme != "http" or url.hostname is None:
        parser.error("only http://HOST:PORT/PATH URLs are supported")
    port = url.port or 80
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    body = args.body.encode() if args.method in ("POST", "PUT", "PATCH") else b""
    request = build_request(url.hostname, port, path, args.method, body)
    duration = args.duration if args.requests is None and args.duration is not None else None
    if duration is None and args.requests is None:
        duration = 5.0
    res = run_load_parallel(
        url.hostname,
        port,
        request,
        args.concurrency,
        duration,
        args.requests,
        args.timeout,
        args.workers,
    )
    print(json.dumps(res.summary(), indent=2))


if __name__ == "__main__":
    main()
