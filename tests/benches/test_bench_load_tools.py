"""The load tools' parsing and figures: loadgen against a small loopback server that answers
with Content-Length, chunked, error and closing responses; its percentiles, summary and the
merge of worker results; the SSE client's percentiles and summary; the fd-limit raise (in a
child process, whose limit it may change)."""

from __future__ import annotations

import math
import subprocess
import sys
from array import array
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio

import loadgen
import realtime
import redis_client
import sse_client
from percentiles import nearest_rank

BENCHES = str(Path(loadgen.__file__).resolve().parent)
HANG_GUARD = 20

OK_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
OK_CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
ERROR_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}"
EMPTY_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"


async def serve_script(nursery: trio.Nursery, request_size: int,
                       answer: Callable[[int], bytes]) -> int:
    """A loopback server answering the n-th request (counted over connections) with
    ``answer(n)``; it closes the connection after a ``Connection: close`` answer."""
    count = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal count
        buffer = b""
        async with stream:
            while True:
                while len(buffer) < request_size:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[request_size:]
                reply = answer(count)
                count += 1
                await stream.send_all(reply)
                if b"Connection: close" in reply:
                    return

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def load(nursery: trio.Nursery, answer: Callable[[int], bytes], total: int
               ) -> loadgen.LoadResult:
    request = loadgen.build_request("127.0.0.1", 1, "/v1/chat/completions")
    port = await serve_script(nursery, len(request), answer)
    request = loadgen.build_request("127.0.0.1", port, "/v1/chat/completions")
    with trio.fail_after(HANG_GUARD):
        return await trio.to_thread.run_sync(
            lambda: loadgen.run_load("127.0.0.1", port, request, 1, total=total, timeout_s=5))


def test_build_request() -> None:
    request = loadgen.build_request("::1", 8080, "/x", headers=[("Authorization", "Bearer k")])
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /x HTTP/1.1", b"Host: [::1]:8080", b"User-Agent: continuum-bench",
        b"Authorization: Bearer k", b"Content-Type: application/json",
        b"Content-Length: %d" % len(loadgen.CHAT_BODY)]
    assert body == loadgen.CHAT_BODY
    get = loadgen.build_request("127.0.0.1", 80, "/health", method="GET", body=b"")
    assert get == (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:80\r\n"
                   b"User-Agent: continuum-bench\r\n\r\n")


async def test_loadgen_reads_each_response_kind(nursery: trio.Nursery) -> None:
    script = [OK_LENGTH, OK_CHUNKED, ERROR_500, EMPTY_200, OK_CLOSE, OK_LENGTH]
    result = await load(nursery, lambda n: script[n % len(script)], total=len(script))
    assert result.ok == 4  # length, chunked, the closing one, and one after reconnecting
    assert result.errors == {"status_500": 1, "empty_body": 1}
    assert len(result.latencies_ns) == 4 and min(result.latencies_ns) > 0


async def test_loadgen_counts_a_malformed_answer(nursery: trio.Nursery) -> None:
    result = await load(nursery, lambda n: b"NOT HTTP\r\n\r\n" if n == 0 else OK_LENGTH,
                        total=2)
    assert result.errors == {"bad_response": 1}
    assert result.ok == 1


def test_percentiles_summary_and_merge() -> None:
    result = loadgen.LoadResult(ok=4, elapsed_s=2.0,
                                latencies_ns=array("q", [4_000_000, 1_000_000, 3_000_000,
                                                         2_000_000]),
                                errors={"status_500": 1})
    assert [result.percentile_ms(q) for q in (0, 25, 50, 75, 99, 100)] == [
        1.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    summary = result.summary()
    assert summary["rps"] == 2.0 and summary["errors"] == 1 and summary["max_ms"] == 4.0
    assert math.isnan(loadgen.LoadResult().percentile_ms(50))
    assert loadgen.LoadResult().rps == 0.0
    other = loadgen.LoadResult(ok=2, elapsed_s=1.0, latencies_ns=array("q", [5_000_000]),
                               errors={"status_500": 2, "timeout": 1})
    result.merge(other)  # side by side: the rates add
    assert result.ok == 6 and result.rps == pytest.approx(4.0)
    assert result.errors == {"status_500": 3, "timeout": 1}
    assert loadgen._split(10, 3) == [4, 3, 3] and sum(loadgen._split(7, 7)) == 7


def test_one_nearest_rank_percentile_in_every_tool() -> None:
    assert math.isnan(nearest_rank([], 50))
    assert nearest_rank([5, 1, 3], 50) == 3.0
    assert nearest_rank([5, 1, 3], 100) == 5.0
    assert nearest_rank([5, 1, 3], 0) == 1.0
    values = [float(v) for v in range(1, 201)]  # 1..200: p99 is the 198th value
    assert nearest_rank(values, 99) == 198.0
    # The Redis and Realtime benches report through it (they sliced on their own before).
    assert realtime._ms([v / 1000 for v in values], 0.99) == pytest.approx(198.0)
    assert "nearest_rank" in vars(redis_client) and "percentile" not in vars(redis_client)


def test_sse_summary() -> None:
    res = sse_client.StreamResult(streams=2, ok=2, ttfb_ns=[1_000_000, 3_000_000],
                                  gaps_ns=[21_000_000, 22_000_000, 20_000_000])
    res.error("reset")
    res.error("reset")
    summary = sse_client.summarize(res, 0.02)
    assert summary["ttfb_p50_ms"] == 1.0 and summary["ttfb_p99_ms"] == 3.0
    assert summary["gap_p50_ms"] == pytest.approx(1.0)  # inter-arrival minus the pacing
    assert summary["gap_max_ms"] == pytest.approx(2.0)
    assert summary["frames"] == 5 and summary["errors"] == {"reset": 2}
    assert math.isnan(sse_client.summarize(sse_client.StreamResult(), 0.02)["gap_mean_ms"])


RAISE = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import sse_client
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
got = sse_client.raise_nofile_limit()
print(got, hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_fd_limit_is_raised_to_the_hard_limit() -> None:
    out = subprocess.run([sys.executable, "-c", RAISE, BENCHES], capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    got, hard, soft_now = (int(x) for x in out)
    assert got == hard == soft_now
