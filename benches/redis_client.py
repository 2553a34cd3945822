"""Redis round trips from trio: coredis (tuned) vs continuum's own client, same run.

Issue 11 asks for a maintained client unless a hand-written one is much faster; this is the
measurement. One ``redis-server`` (started here on a free port of 127.0.0.1, stopped at the
end), one script, ``EVALSHA`` calls timed one by one (``perf_counter_ns``):

* ``bare``    — the floor: one trio stream, ``hiredis.pack_command`` and ``hiredis.Reader``,
  nothing else (no timeout, no pool); concurrency 1 only.
* ``own``     — ``continuum.net.redis.RedisClient`` (``--pool-size`` connections, pipelined).
* ``own-p1``  — the same with one connection: every concurrent call pipelined on it.
* ``coredis`` — coredis on trio (anyio), tuned as its docs allow: ``Config.optimized`` (no
  runtime validation), ``verify_version=False``, a connection pool of ``--pool-size``.

Each target runs ``--calls`` calls at concurrency 1 and at ``--concurrency`` (tasks sharing
one client), ``--rounds`` times with the target order rotating; per-call p50/p99 over all
rounds, calls/s, this process's CPU per call, and coredis/own ratios. The script is
``--script incr`` (one ``INCR``, what the first measurements of the choice used) or
``admit`` (the rate limiter's admission: a request limit, a token reservation and a
concurrency lease, one ``EVALSHA``). Figures are printed, not asserted.

    python benches/redis_client.py [--calls 4000] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hiredis
import trio

from continuum.core import ratelimit as rl
from continuum.net.redis import RedisClient, Script
from continuum.testing.redis_server import RedisServer
from percentiles import nearest_rank

INCR = Script("return redis.call('INCR', KEYS[1])")

Call = Callable[[], Awaitable[Any]]


async def timed(
    call: Call, calls: int, concurrency: int, out: list[int], cpu_out: list[float]
) -> float:
    """Run ``calls`` calls over ``concurrency`` tasks; append per-call ns to ``out`` and this
    process's CPU seconds per call to ``cpu_out``; return the elapsed seconds."""
    per_task = calls // concurrency

    async def worker() -> None:
        clock = time.perf_counter_ns
        for _ in range(per_task):
            start = clock()
            await call()
            out.append(clock() - start)

    begin = time.perf_counter()
    cpu = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    cpu_out.append((time.process_time() - cpu) / (per_task * concurrency))
    return time.perf_counter() - begin


class Bare:
    """The floor: a minimal RESP exchange on one trio stream."""

    def __init__(self, stream: trio.SocketStream, script: Script, keys: list[str], argv: list[str]):
        self.stream = stream
        self.reader = hiredis.Reader()
        self.command = hiredis.pack_command(  # the stub types a 1-tuple
            ("EVALSHA", script.sha1, len(keys), *keys, *argv))  # type: ignore[arg-type]

    async def call(self) -> Any:
        await self.stream.send_all(self.command)
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            self.reader.feed(await self.stream.receive_some(65536))


async def open_target(
    name: str, port: int, pool_size: int, script: Script, keys: list[str], argv: list[str]
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """A zero-argument call for ``name`` and its closer."""
    if name == "bare":
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        setup = hiredis.pack_command(("SCRIPT", "LOAD", script.source))  # type: ignore[arg-type]
        await stream.send_all(setup)
        await stream.receive_some(1024)
        bare = Bare(stream, script, keys, argv)
        return bare.call, stream.aclose
    if name in ("own", "own-p1"):
        size = 1 if name == "own-p1" else pool_size
        client = RedisClient.from_url(f"redis://127.0.0.1:{port}/0", pool_size=size)
        client.register_script(script)

        async def own() -> Any:
            return await client.evalsha(script, keys, argv)

        return own, client.aclose
    if name == "coredis":
        import coredis

        coredis.Config.optimized = True
        cd = coredis.Redis(
            host="127.0.0.1", port=port, verify_version=False, max_connections=pool_size
        )
        await cd.__aenter__()
        sha = await cd.script_load(script.source)

        async def core() -> Any:
            return await cd.evalsha(sha, keys=keys, args=argv)

        async def close() -> None:
            await cd.__aexit__(None, None, None)

        return core, close
    raise ValueError(name)


def workload(name: str) -> tuple[Script, list[str], list[str]]:
    if name == "incr":
        return INCR, ["bench:n"], []
    # The rate limiter's admission: a request limit and a token reservation that always
    # admit, and a concurrency lease (never released here; the limit is out of reach).
    checks: list[rl.Check] = [
        rl.RateCheck("api_key", "k1", rl.Rate(1e9, 1e9)),
        rl.RateCheck("api_key", "k1", rl.Rate(1e12, 1e12), cost=100, tokens=True),
        rl.ConcurrencyCheck("api_key", "k1", limit=10**9, ttl=60.0),
    ]
    keys, argv = rl.admission_arguments(checks, "bench:", lease="bench-lease")
    return Script(rl.ADMIT_SCRIPT), keys, argv


async def run(args: argparse.Namespace) -> int:
    targets = [t for t in args.targets.split(",") if t != "coredis"]
    if "coredis" in args.targets.split(","):
        try:
            import coredis  # noqa: F401
        except ImportError:
            print("coredis is not installed (pip install -e '.[bench]'): measuring without it")
        else:
            targets.append("coredis")
    script, keys, argv = workload(args.script)
    samples: dict[tuple[str, int], list[int]] = {}
    rates: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp,
        RedisServer(Path(tmp)) as server,
        trio.fail_after(args.time_limit),
    ):
        print(
            f"redis-server on 127.0.0.1:{server.port}; script {args.script}; "
            f"{args.calls} calls x {args.rounds} rounds; pool {args.pool_size}"
        )
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
            for name in order:
                call, close = await open_target(
                    name, server.port, args.pool_size, script, keys, argv
                )
                try:
                    await timed(call, 300, 1, [], [])  # warm-up
                    levels = [1] if name == "bare" else [1, args.concurrency]
                    for conc in levels:
                        out = samples.setdefault((name, conc), [])
                        cpu = cpus.setdefault((name, conc), [])
                        secs = await timed(call, args.calls, conc, out, cpu)
                        rates.setdefault((name, conc), []).append(args.calls / secs)
                finally:
                    await close()
    print(f"\n{'target':<9} {'c':>3} {'p50 us':>8} {'p99 us':>8} {'calls/s':>9} {'cpu us':>7}")
    p50: dict[tuple[str, int], float] = {}
    p99: dict[tuple[str, int], float] = {}
    for (name, conc), ns in samples.items():
        p50[name, conc] = nearest_rank(ns, 50) / 1000.0
        p99[name, conc] = nearest_rank(ns, 99) / 1000.0
        rate = statistics.median(rates[name, conc])
        cpu_us = statistics.median(cpus[name, conc]) * 1e6
        print(
            f"{name:<9} {conc:>3} {p50[name, conc]:>8.1f} {p99[name, conc]:>8.1f} "
            f"{rate:>9.0f} {cpu_us:>7.1f}"
        )
    if "coredis" in targets and "own" in targets:
        print()
        for conc in (1, args.concurrency):
            print(
                f"coredis/own at c={conc}: p50 x{p50['coredis', conc] / p50['own', conc]:.2f}, "
                f"p99 x{p99['coredis', conc] / p99['own', conc]:.2f}"
            )
    if "bare" in targets and "own" in targets:
        print(f"own/bare at c=1: p50 x{p50['own', 1] / p50['bare', 1]:.2f}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per target and level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--script", choices=("incr", "admit"), default="incr")
    parser.add_argument(
        "--targets", default="bare,own,own-p1,coredis", help="comma-separated subset"
    )
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds, all in all")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return trio.run(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
