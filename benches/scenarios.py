"""The benchmark scenarios beyond ``core``/``strategies``: each router figure next to a baseline
measured in the same run (``run.py --scenarios``; method in ``docs/benchmarks.md``).

* ``sweep``       -- non-stream throughput/latency at concurrency 1, 16, 64, 256: router vs
  floor vs direct (uses ``run.py``'s core processes);
* ``streaming``   -- N paced SSE streams (64 frames, 20 ms apart) through the router vs direct
  to the upstream: added TTFB, added per-frame gap, stalled streams;
* ``translation`` -- the same paced stream through the router to an OpenAI mock (pass-through)
  and to an Anthropic-API mock (translated): the added per-frame gap of the translation;
* ``idle``        -- 10,000 idle keep-alive client connections: router RSS vs the floor's;
* ``soak``        -- bounded mixed load, RSS sampled every second, slope (router and floor);
* ``startup``     -- process start to first 200 on ``/health`` (router vs a bare trio server);
* ``concurrency`` -- 100, 1,000 and as many concurrent requests as the fd limit allows against
  a slow (500 ms) upstream: router vs floor vs direct, req/s, p50/p99, CPU per request,
  upstream connects, 429/503 answers;
* ``fronts``      -- the native front vs the hypercorn front: c=64 throughput, c=1 added
  latency, 64 paced streams;
* ``limits``      -- the router with auth and limits off, in memory, in Redis (issue 11's
  cost), against the floor in the same run;
* ``features``    -- the router with the newer features off and with auth + limits + metrics
  + tracing on, next to the ``core`` router and the floor in the same run (issue 15);
* ``external``    -- ``wrk``/``hey`` against the router when they are installed.

Every scenario returns ``(results, report_lines)``; long ones print progress on stderr.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import loadgen
import sse_client
from percentiles import nearest_rank
from procs import ROOT, BenchError, Service, cpu_seconds, free_port, http_request, rss_mb

BENCHES: Final = ROOT / "benches"
CHAT_PATH: Final = "/v1/chat/completions"
SWEEP_CONCURRENCY: Final = (1, 16, 64, 256)
SWEEP_TARGETS: Final = ("direct", "floor", "router")
STREAM_FRAMES: Final = 64
STREAM_INTERVAL: Final = 0.02
STALL_FACTOR: Final = 10.0
STREAM_COUNTS: Final = (64, 512, 2000)
STREAM_COUNTS_QUICK: Final = (64, 512)
IDLE_CONNECTIONS: Final = 10_000
#: The `idle` scenario's second router takes its clients over this long (the first: all
#: at once); how fast they arrive decides how many hold a task before any is parked.
IDLE_SPREAD_S: Final = 5.0

# Targets (the performance budget in docs/design.md, issue 4).
ADDED_TTFB_P99_TARGET_MS: Final = 1.0
ADDED_GAP_P99_TARGET_MS: Final = 0.1
NO_STALL_STREAMS: Final = 512
# The streaming floor (issue 15 item 5): the router against a bare trio byte pipe.
PIPE_STREAMS: Final = 100
PIPE_ROUNDS: Final = 3  # each target once per round; the median is taken
PIPE_CPU_RATIO_TARGET: Final = 0.6  # router CPU per forwarded frame <= 0.6 x the pipe's
PIPE_TTFB_MARGIN_MS: Final = 1.0  # router TTFB p99 <= the pipe's + 1 ms
TRANSLATION_GAP_TARGET_US: Final = 100.0
IDLE_RSS_TARGET_MB: Final = 100.0  # issue 15 item 6
SOAK_SLOPE_TARGET: Final = 1.0  # MB/min
STARTUP_TARGET_S: Final = 0.5

# The concurrency scenario (issue 15): many long requests, the shape of LLM traffic.
CONCURRENCY_LEVELS: Final = (100, 1000)
CONCURRENCY_LEVELS_QUICK: Final = (50, 200)
#: The highest level: what the fd limit allows, but no more than this (the ephemeral port
#: range is shared by the load client's and the proxies' connections).
CONCURRENCY_MAX: Final = 10_000
SLOW_UPSTREAM_S: Final = 0.5
CONCURRENCY_TARGET_C: Final = 1000
CONC_RPS_RATIO_TARGET: Final = 0.9  # router >= 0.9 x floor throughput
CONC_CPU_RATIO_TARGET: Final = 1.3  # router CPU per request <= 1.3 x the floor's
CONC_ADDED_P50_TARGET_MS: Final = 10.0  # router p50 minus direct p50
#: The router as the operations guide configures it: the pool sized for the concurrency, the
#: default idle cap (100) -- the case that churned -- and health checks on.
CONCURRENCY_ROUTER_CONFIG: Final = """\
server:
  bind_address: "{bind}"
  connection_pool_size: {pool}
  keepalive_timeout: 600s
logging:
  level: warning
  access_log: false
http_client:
  pool_max_idle_per_host: 100
backends:
  - name: upstream
    url: "{url}"
    models: [bench-model]
"""

#: The bench router: one backend, health checks off, logging at error. ``run.py``'s ``core``
#: router is this with no ``{extra}``; ``limits`` and ``features`` put top-level blocks there.
ROUTER_CONFIG: Final = """\
server:
  bind_address: "{bind}"
  connection_pool_size: 256
health_checks:
  enabled: false
logging:
  level: error
{extra}backends:
  - name: upstream
    url: "{upstream_url}"
    models: ["bench-model"]
"""

Load = Callable[[str, int, float], loadgen.LoadResult]
Report = tuple[dict[str, Any], list[str]]

STREAM_ROUTER_CONFIG: Final = """\
server:
  bind_address: "{bind}"
  connection_pool_size: 4096
  keepalive_timeout: 600s
health_checks:
  enabled: false
logging:
  level: error
http_client:
  pool_max_idle_per_host: 4096
backends:
"""
OPENAI_BACKEND: Final = """\
  - name: {name}
    url: "{url}"
    models: [{models}]
    max_queue: 4096
"""
ANTHROPIC_BACKEND: Final = """\
  - name: {name}
    type: anthropic
    url: "{url}"
    api_key: bench-key
    models: [{models}]
    max_queue: 4096
"""


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


class Progress:
    """One stderr line per step: ``[name] step 3/8 what -- 12.1 s elapsed, ~20 s left``."""

    def __init__(self, name: str, steps: int) -> None:
        self.name = name
        self.steps = max(1, steps)
        self.done = 0
        self.t0 = time.monotonic()

    def step(self, what: str) -> None:
        elapsed = time.monotonic() - self.t0
        left = elapsed / self.done * (self.steps - self.done) if self.done else float("nan")
        left_s = f"~{left:.0f} s left" if left == left else "estimating"
        print(
            f"[{self.name}] step {self.done + 1}/{self.steps} {what} -- "
            f"{elapsed:.1f} s elapsed, {left_s}",
            file=sys.stderr,
            flush=True,
        )
        self.done += 1


@dataclass
class Env:
    """What the scenarios share: settings, where to write, how to start a router."""

    args: argparse.Namespace
    host: str
    workdir: Path
    router_argv: Callable[[str, Path], list[str]]  # (name, config path) -> argv
    router_env: dict[str, str]

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def host_in_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def upstream(self, name: str, *extra: str) -> Service:
        port = free_port(self.host)
        argv = [sys.executable, str(BENCHES / "upstream.py"), "--host", self.host]
        argv += ["--port", str(port), *extra]
        return Service(name, argv, self.host, port, self.workdir / f"{name}.log")

    def floor(self, name: str, upstream: Service) -> Service:
        port = free_port(self.host)
        argv = [sys.executable, str(BENCHES / "floor_proxy.py"), "--host", self.host]
        argv += ["--port", str(port), "--upstream", f"{self.host_in_url}:{upstream.port}"]
        return Service(name, argv, self.host, port, self.workdir / f"{name}.log")

    def pipe(self, name: str, upstream: Service) -> Service:
        """The streaming floor: ``floor_proxy.py --pipe``, a bare trio byte pipe."""
        svc = self.floor(name, upstream)
        svc.argv.append("--pipe")
        return svc

    def pump(self, name: str, upstream: Service) -> Service:
        """The pipe with one epoll pump task (``floor_proxy.py --pump``): the ceiling of
        forwarding streams with fewer scheduler trips."""
        svc = self.floor(name, upstream)
        svc.argv.append("--pump")
        return svc

    def mock(self, name: str, api: str, model: str, frames: int, interval: float) -> Service:
        port = free_port(self.host)
        argv = [sys.executable, "-m", "continuum", "mock", "--bind", f"{self.host_in_url}:{port}"]
        argv += ["--api", api, "--models", model, "--tokens-per-second", f"{1 / interval:g}"]
        argv += ["--stream-chunks", str(frames)]
        return Service(
            name,
            argv,
            self.host,
            port,
            self.workdir / f"{name}.log",
            env=self.router_env,
            ready_path="/health",
        )

    def router(self, name: str, backends: str) -> Service:
        port = free_port(self.host)
        config = self.workdir / f"{name}.yaml"
        bind = f"{self.host_in_url}:{port}"
        config.write_text(STREAM_ROUTER_CONFIG.replace("{bind}", bind) + backends)
        return Service(
            name,
            self.router_argv(name, config),
            self.host,
            port,
            self.workdir / f"{name}.log",
            env=self.router_env,
            ready_path="/health",
        )

    def url(self, svc: Service) -> str:
        return f"http://{self.host_in_url}:{svc.port}"


@contextlib.contextmanager
def running(*services: Service) -> Iterator[None]:
    """Start ``services`` in order (each ready before the next), stop them all on exit."""
    started: list[Service] = []
    try:
        for svc in services:
            started.append(svc)
            svc.start()
            svc.wait_ready()
        yield
    finally:
        for svc in reversed(started):
            svc.stop()


def pid_of(svc: Service) -> int:
    assert svc.proc is not None
    return svc.proc.pid


# --- sweep -------------------------------------------------------------------------------------


def sweep(env: Env, load: Load) -> Report:
    """Concurrency 1..256 for direct, floor, router; order rotating per concurrency."""
    duration = env.args.sweep_duration or (0.8 if env.quick else 3.0)
    prog = Progress("sweep", len(SWEEP_CONCURRENCY) * len(SWEEP_TARGETS))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for i, c in enumerate(SWEEP_CONCURRENCY):
        order = SWEEP_TARGETS[i % 3 :] + SWEEP_TARGETS[: i % 3]
        for target in order:
            prog.step(f"c={c} {target} ({duration:g} s)")
            load(target, c, min(0.3, duration / 2))  # warm this concurrency's connections
            res = load(target, c, duration)
            table.setdefault(str(c), {})[target] = {
                "rps": round(res.rps, 1),
                "p50_ms": res.percentile_ms(50),
                "p99_ms": res.percentile_ms(99),
                "errors": res.error_count,
            }
    lines = [
        "| concurrency | direct req/s | floor req/s | router req/s | router/floor "
        "| router p50 ms | router p99 ms | floor p99 ms | direct p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for conc, row in table.items():
        d, f, r = row["direct"], row["floor"], row["router"]
        ratio = r["rps"] / f["rps"] if f["rps"] else float("nan")
        r["ratio_vs_floor"] = ratio
        lines.append(
            f"| {conc} | {d['rps']:,.0f} | {f['rps']:,.0f} | {r['rps']:,.0f} | {ratio:.2f} "
            f"| {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {f['p99_ms']:.3f} | {d['p99_ms']:.3f} |"
        )
    errors = sum(
        int(v["errors"]) for row in table.values() for k, v in row.items() if k in SWEEP_TARGETS
    )
    return {"duration_s": duration, "table": table, "errors": errors}, lines


# --- streaming ---------------------------------------------------------------------------------


def _streams(
    env: Env, svc: Service, model: str, n: int, frames: int, interval: float, *, pace: bool = True
) -> sse_client.StreamResult:
    body = sse_client.stream_body(model, frames if pace else None, interval if pace else None)
    headers: dict[str, str] = {}
    request = sse_client.build_request(env.host, svc.port, CHAT_PATH, body, headers)
    timeout = frames * interval + 30.0
    return sse_client.run_streams(
        env.host, svc.port, request, n, interval, timeout_s=timeout, stall_factor=STALL_FACTOR
    )


def _added(router: dict[str, Any], base: dict[str, Any], key: str) -> float:
    return float(router[key]) - float(base[key])


def streaming(env: Env) -> Report:
    """N paced streams through the router vs direct to the same upstream."""
    counts = env.args.stream_counts or (STREAM_COUNTS_QUICK if env.quick else STREAM_COUNTS)
    frames = env.args.stream_frames or (16 if env.quick else STREAM_FRAMES)
    interval = STREAM_INTERVAL
    upstream = env.upstream("stream-upstream")
    backends = OPENAI_BACKEND.format(name="upstream", url=env.url(upstream), models="bench-model")
    router = env.router("stream-router", backends)
    pipe = env.pipe("stream-pipe", upstream)
    pump = env.pump("stream-pump", upstream)
    prog = Progress("streaming", 4 * len(counts) + 3 * PIPE_ROUNDS)
    out: dict[str, Any] = {"frames": frames, "interval_s": interval, "runs": {}}
    lines = [
        f"streams of {frames} frames at {interval * 1000:.0f} ms; added = router minus direct, "
        "gap = inter-arrival minus pacing",
        "",
        "| streams | direct TTFB p50/p99 ms | router TTFB p50/p99 ms | added TTFB p50/p99 ms "
        "| added gap p50/p99 ms | direct gap p99 ms | stalled direct/router | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with running(upstream, router, pipe, pump):
        for i, n in enumerate(counts):
            order = [("direct", upstream), ("router", router)]
            if i % 2:
                order.reverse()
            runs: dict[str, dict[str, Any]] = {}
            for name, svc in order:
                prog.step(f"{name} {n} streams warm-up")
                _streams(env, svc, "bench-model", n, 2, 0.001)
                prog.step(f"{name} {n} streams x {frames} frames")
                res = _streams(env, svc, "bench-model", n, frames, interval)
                runs[name] = sse_client.summarize(res, interval)
            d, r = runs["direct"], runs["router"]
            added = {
                "ttfb_p50_ms": _added(r, d, "ttfb_p50_ms"),
                "ttfb_p99_ms": _added(r, d, "ttfb_p99_ms"),
                "gap_p50_ms": _added(r, d, "gap_p50_ms"),
                "gap_p99_ms": _added(r, d, "gap_p99_ms"),
            }
            out["runs"][str(n)] = {"direct": d, "router": r, "added": added}
            errs = sum(d["errors"].values()) + sum(r["errors"].values())
            lines.append(
                f"| {n} | {d['ttfb_p50_ms']:.2f} / {d['ttfb_p99_ms']:.2f} "
                f"| {r['ttfb_p50_ms']:.2f} / {r['ttfb_p99_ms']:.2f} "
                f"| {added['ttfb_p50_ms']:+.3f} / {added['ttfb_p99_ms']:+.3f} "
                f"| {added['gap_p50_ms']:+.3f} / {added['gap_p99_ms']:+.3f} "
                f"| {d['gap_p99_ms']:.3f} | {d['stalled']} / {r['stalled']} | {errs} |"
            )
        floor_out, floor_lines = _vs_pipe(env, router, pipe, pump, frames, interval, prog)
    lines.append("")
    for n_key, run in out["runs"].items():
        a = run["added"]
        lines.append(
            f"streaming {n_key} streams: added TTFB p99 {a['ttfb_p99_ms']:+.3f} ms (target < "
            f"{ADDED_TTFB_P99_TARGET_MS} ms) {verdict(a['ttfb_p99_ms'] < ADDED_TTFB_P99_TARGET_MS)}"
            f"; added gap p99 {a['gap_p99_ms'] * 1000:+.0f} us (target < "
            f"{ADDED_GAP_P99_TARGET_MS * 1000:.0f} us) "
            f"{verdict(a['gap_p99_ms'] < ADDED_GAP_P99_TARGET_MS)}; router stalled "
            f"{run['router']['stalled']}"
            + (
                f" (target 0 at {NO_STALL_STREAMS}) {verdict(run['router']['stalled'] == 0)}"
                if int(n_key) == NO_STALL_STREAMS
                else " (reference)"
            )
        )
    out["vs_pipe"] = floor_out
    lines += ["", *floor_lines]
    out["errors"] = sum(
        sum(run[t]["errors"].values()) for run in out["runs"].values() for t in ("direct", "router")
    ) + sum(floor_out["errors"].values())
    return out, lines


def _vs_pipe(
    env: Env,
    router: Service,
    pipe: Service,
    pump: Service,
    frames: int,
    interval: float,
    prog: Progress,
) -> Report:
    """The router against the streaming floor (a bare trio byte pipe): CPU per forwarded frame
    and TTFB p99 of ``PIPE_STREAMS`` concurrent paced streams, rounds interleaved. The pump
    (the pipe moved by one epoll task) is a reference: how far fewer scheduler trips go."""
    targets = [("pipe", pipe), ("pump", pump), ("router", router)]
    per: dict[str, dict[str, list[float]]] = {
        name: {"cpu_us_per_frame": [], "ttfb_p99_ms": []} for name, _ in targets
    }
    errors: dict[str, int] = dict.fromkeys(per, 0)
    for rnd in range(PIPE_ROUNDS):
        k = rnd % len(targets)
        for name, svc in targets[k:] + targets[:k]:
            prog.step(f"vs pipe round {rnd + 1}/{PIPE_ROUNDS}: {name} {PIPE_STREAMS} streams")
            _streams(env, svc, "bench-model", PIPE_STREAMS, 2, 0.001)  # warm-up
            cpu = cpu_seconds(pid_of(svc))
            res = _streams(env, svc, "bench-model", PIPE_STREAMS, frames, interval)
            cpu = cpu_seconds(pid_of(svc)) - cpu
            n_frames = len(res.gaps_ns) + res.ok
            errors[name] += PIPE_STREAMS - res.ok  # streams that did not end properly
            per[name]["cpu_us_per_frame"].append(cpu / n_frames * 1e6 if n_frames else float("nan"))
            per[name]["ttfb_p99_ms"].append(nearest_rank(res.ttfb_ns, 99) / 1e6)
    fig = {name: {k: median(v) for k, v in d.items()} for name, d in per.items()}
    p, r = fig["pipe"], fig["router"]
    cpu_ratio = r["cpu_us_per_frame"] / p["cpu_us_per_frame"]
    pump_ratio = fig["pump"]["cpu_us_per_frame"] / p["cpu_us_per_frame"]
    ttfb_added = r["ttfb_p99_ms"] - p["ttfb_p99_ms"]
    out: dict[str, Any] = {
        "streams": PIPE_STREAMS,
        "rounds": PIPE_ROUNDS,
        **fig,
        "per_round": per,
        "cpu_ratio": cpu_ratio,
        "pump_cpu_ratio": pump_ratio,
        "ttfb_p99_added_ms": ttfb_added,
        "errors": errors,
    }
    lines = [
        f"streaming floor: {PIPE_STREAMS} streams x {frames} frames, router vs a bare trio byte "
        f"pipe (`floor_proxy.py --pipe`) and the pipe on one epoll pump task (`--pump`), "
        f"median of {PIPE_ROUNDS} rounds, order rotating",
        "",
        "| target | CPU us / forwarded frame | / pipe | TTFB p99 ms | failed streams |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {fig[name]['cpu_us_per_frame']:.1f} "
            f"| {fig[name]['cpu_us_per_frame'] / p['cpu_us_per_frame']:.2f} "
            f"| {fig[name]['ttfb_p99_ms']:.2f} | {errors[name]} |"
            for name, _ in targets
        ),
        "",
        f"streaming floor: router CPU per frame {cpu_ratio:.2f} x the pipe's (target <= "
        f"{PIPE_CPU_RATIO_TARGET}) {verdict(cpu_ratio <= PIPE_CPU_RATIO_TARGET)}; TTFB p99 "
        f"{ttfb_added:+.2f} ms vs the pipe (target <= +{PIPE_TTFB_MARGIN_MS:.0f} ms) "
        f"{verdict(ttfb_added <= PIPE_TTFB_MARGIN_MS)}; the bare pump {pump_ratio:.2f} x the pipe "
        "(reference)",
    ]
    return out, lines


# --- translation -------------------------------------------------------------------------------


def translation(env: Env) -> Report:
    """Paced streams through the router: OpenAI mock (pass-through) vs Anthropic mock."""
    n = env.args.translation_streams or (32 if env.quick else 64)
    frames = 16 if env.quick else STREAM_FRAMES
    rounds = 1 if env.quick else 3
    interval = STREAM_INTERVAL
    m_openai = env.mock("mock-openai", "openai", "bench-openai", frames, interval)
    m_anthropic = env.mock("mock-anthropic", "anthropic", "bench-anthropic", frames, interval)
    backends = OPENAI_BACKEND.format(name="oai", url=env.url(m_openai), models="bench-openai")
    backends += ANTHROPIC_BACKEND.format(
        name="anth", url=env.url(m_anthropic), models="bench-anthropic"
    )
    router = env.router("translation-router", backends)
    models = {"passthrough": "bench-openai", "translated": "bench-anthropic"}
    prog = Progress("translation", 2 + 2 * rounds)
    per_round: dict[str, list[dict[str, Any]]] = {k: [] for k in models}
    with running(m_openai, m_anthropic, router):
        for kind, model in models.items():
            prog.step(f"{kind} warm-up")
            res = _streams(env, router, model, n, frames, interval, pace=False)
            if res.ok != n:
                raise BenchError(
                    f"translation warm-up: {kind} ({model}) {res.ok}/{n} streams ok, "
                    f"errors {res.errors}"
                )
        for r in range(rounds):
            order = list(models.items())
            if r % 2:
                order.reverse()
            for kind, model in order:
                prog.step(f"round {r + 1}/{rounds} {kind}: {n} streams x {frames} frames")
                res = _streams(env, router, model, n, frames, interval, pace=False)
                per_round[kind].append(sse_client.summarize(res, interval))
    diffs_p99 = [
        (float(b["gap_p99_ms"]) - float(a["gap_p99_ms"])) * 1000
        for a, b in zip(per_round["passthrough"], per_round["translated"], strict=True)
    ]
    diffs_p50 = [
        (float(b["gap_p50_ms"]) - float(a["gap_p50_ms"])) * 1000
        for a, b in zip(per_round["passthrough"], per_round["translated"], strict=True)
    ]
    ttfb = [
        float(b["ttfb_p99_ms"]) - float(a["ttfb_p99_ms"])
        for a, b in zip(per_round["passthrough"], per_round["translated"], strict=True)
    ]
    added_p99 = median(diffs_p99)

    def med(kind: str, key: str) -> float:
        return median([float(s[key]) for s in per_round[kind]])

    lines = [
        f"translation: {n} streams x {frames} frames at {interval * 1000:.0f} ms through the "
        f"router, median of {rounds} round(s)",
        "",
        "| path | TTFB p50 ms | TTFB p99 ms | gap p50 ms | gap p99 ms | stalled |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in models:
        lines.append(
            f"| {kind} | {med(kind, 'ttfb_p50_ms'):.3f} | {med(kind, 'ttfb_p99_ms'):.3f} "
            f"| {med(kind, 'gap_p50_ms'):.3f} | {med(kind, 'gap_p99_ms'):.3f} "
            f"| {sum(int(s['stalled']) for s in per_round[kind])} |"
        )
    lines += [
        "",
        f"translation overhead (Anthropic upstream minus pass-through): per-frame gap p99 "
        f"{added_p99:+.0f} us (target < {TRANSLATION_GAP_TARGET_US:.0f} us) "
        f"{verdict(added_p99 < TRANSLATION_GAP_TARGET_US)}; gap p50 {median(diffs_p50):+.0f} us, "
        f"TTFB p99 {median(ttfb):+.3f} ms (reference)",
    ]
    errors = sum(sum(s["errors"].values()) for runs in per_round.values() for s in runs)
    return {
        "streams": n,
        "frames": frames,
        "rounds": per_round,
        "added_gap_p99_us": added_p99,
        "added_gap_p50_us": median(diffs_p50),
        "added_ttfb_p99_ms": median(ttfb),
        "errors": errors,
    }, lines


# --- idle connections --------------------------------------------------------------------------


def open_spread(
    host: str, port: int, count: int, seconds: float
) -> tuple[list[socket.socket], dict[str, int]]:
    """``sse_client.open_idle`` paced: ``count`` connections in 20 steps over ``seconds``."""
    socks: list[socket.socket] = []
    errors: dict[str, int] = {}
    steps = 20
    t0 = time.monotonic()
    for i in range(steps):
        n = count * (i + 1) // steps - count * i // steps
        more, errs = sse_client.open_idle(host, port, n)
        socks += more
        for key, value in errs.items():
            errors[key] = errors.get(key, 0) + value
        time.sleep(max(0.0, t0 + seconds * (i + 1) / steps - time.monotonic()))
    return socks, errors


def idle(env: Env) -> Report:
    """10,000 idle keep-alive client connections: router RSS, the floor's as the baseline.

    Two routers: one whose clients all arrive at once (a burst: every connection holds a
    task before the first is parked, the target's case) and one whose clients arrive over
    :data:`IDLE_SPREAD_S` (most are parked before the last arrive)."""
    count = env.args.idle_connections or IDLE_CONNECTIONS
    upstream = env.upstream("idle-upstream")
    floor = env.floor("idle-floor", upstream)
    backends = OPENAI_BACKEND.format(name="upstream", url=env.url(upstream), models="bench-model")
    router = env.router("idle-router", backends)
    spread = env.router("idle-router-spread", backends)
    prog = Progress("idle", 3)
    out: dict[str, Any] = {"connections": count}
    with running(upstream, floor, router, spread):
        for svc in (router, spread, floor):
            name = svc.name.removeprefix("idle-")
            time.sleep(0.3)
            before = rss_mb(pid_of(svc))
            prog.step(f"{name}: opening {count} keep-alive connections")
            t0 = time.monotonic()
            if svc is spread:
                socks, errors = open_spread(env.host, svc.port, count, IDLE_SPREAD_S)
            else:
                socks, errors = sse_client.open_idle(env.host, svc.port, count)
            opened_s = time.monotonic() - t0
            time.sleep(1.0)  # idle: nothing in flight
            after = rss_mb(pid_of(svc))
            for sock in socks:
                sock.close()
            out[name] = {
                "rss_before_mb": round(before, 1),
                "rss_after_mb": round(after, 1),
                "open": len(socks),
                "errors": errors,
                "open_s": round(opened_s, 2),
                "kb_per_connection": round((after - before) * 1024 / max(1, len(socks)), 2),
            }
    r, sp, f = out["router"], out["router-spread"], out["floor"]
    lines = [
        "| process | clients arrive | connections open | RSS before MB | RSS with them MB "
        "| KB per connection |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in ("router", "router-spread", "floor"):
        s = out[name]
        how = "over" if name == "router-spread" else "all at once, in"
        lines.append(
            f"| {name.removesuffix('-spread')} | {how} {s['open_s']:.1f} s | {s['open']:,} "
            f"| {s['rss_before_mb']:.1f} | {s['rss_after_mb']:.1f} "
            f"| {s['kb_per_connection']:.1f} |"
        )
    lines += [
        "",
        f"idle connections: router RSS with {r['open']:,} idle keep-alive connections "
        f"arriving at once {r['rss_after_mb']:.0f} MB (target < {IDLE_RSS_TARGET_MB:.0f} MB) "
        f"{verdict(r['rss_after_mb'] < IDLE_RSS_TARGET_MB and r['open'] == count)}; "
        f"{r['kb_per_connection']:.1f} KB/connection vs floor {f['kb_per_connection']:.1f}; "
        f"arriving over {sp['open_s']:.0f} s {sp['rss_after_mb']:.0f} MB",
    ]
    names = ("router", "router-spread", "floor")
    out["errors"] = sum(sum(out[n]["errors"].values()) for n in names)
    return out, lines


# --- soak --------------------------------------------------------------------------------------


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 2:
        return float("nan")
    xs = [t for t, _ in samples]
    ys = [m for _, m in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 60


def _loadgen_proc(host: str, port: int, conc: int, seconds: float) -> multiprocessing.Process:
    ctx = multiprocessing.get_context("fork")
    request = loadgen.build_request(host, port, CHAT_PATH)
    proc = ctx.Process(
        target=loadgen.run_load, args=(host, port, request, conc, seconds), daemon=True
    )
    proc.start()
    return proc  # type: ignore[return-value]


def soak(env: Env) -> Report:
    """Mixed stream + non-stream load on router and floor side by side; RSS slope of each."""
    seconds = (
        env.args.soak_seconds if env.args.soak_seconds is not None else (5.0 if env.quick else 60.0)
    )
    warmup = min(10.0, seconds / 5)
    upstream = env.upstream("soak-upstream")
    floor = env.floor("soak-floor", upstream)
    backends = OPENAI_BACKEND.format(name="upstream", url=env.url(upstream), models="bench-model")
    router = env.router("soak-router", backends)
    samples: dict[str, list[tuple[float, float]]] = {"router": [], "floor": []}
    stream_stats = {"router": [0, 0], "floor": [0, 0]}  # [streams ok, stalled]
    with running(upstream, floor, router):
        stop = threading.Event()
        t0 = time.monotonic()

        def sampler() -> None:
            while not stop.wait(1.0 - (time.monotonic() - t0) % 1.0):
                t = time.monotonic() - t0
                samples["router"].append((t, rss_mb(pid_of(router))))
                samples["floor"].append((t, rss_mb(pid_of(floor))))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        procs = [_loadgen_proc(env.host, svc.port, 4, seconds) for svc in (router, floor)]
        steps = max(1, int(seconds // 5))
        prog = Progress("soak", steps)
        next_progress = 0.0
        try:
            while time.monotonic() - t0 < seconds:
                elapsed = time.monotonic() - t0
                if elapsed >= next_progress and prog.done < steps:
                    last = samples["router"][-1][1] if samples["router"] else float("nan")
                    prog.step(f"{elapsed:.0f}/{seconds:.0f} s, router RSS {last:.1f} MB")
                    next_progress += 5.0
                for name, svc in (("router", router), ("floor", floor)):
                    res = _streams(env, svc, "bench-model", 32, 10, 0.01)
                    stream_stats[name][0] += res.ok
                    stream_stats[name][1] += res.stalled
        finally:
            for p in procs:
                p.join(seconds + 10)
                if p.is_alive():
                    p.kill()
            stop.set()
            thread.join()
    out: dict[str, Any] = {"seconds": seconds, "warmup_s": warmup, "samples": samples}
    lines = [
        "| process | RSS start MB | RSS end MB | slope after warm-up MB/min "
        "| streams ok / stalled |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("router", "floor"):
        s = samples[name]
        slope = slope_mb_per_min([p for p in s if p[0] >= warmup])
        out[name] = {
            "slope_mb_per_min": slope,
            "rss_start_mb": s[0][1] if s else float("nan"),
            "rss_end_mb": s[-1][1] if s else float("nan"),
            "streams_ok": stream_stats[name][0],
            "streams_stalled": stream_stats[name][1],
        }
        lines.append(
            f"| {name} | {out[name]['rss_start_mb']:.1f} | {out[name]['rss_end_mb']:.1f} "
            f"| {slope:+.2f} | {stream_stats[name][0]} / {stream_stats[name][1]} |"
        )
    rs = out["router"]["slope_mb_per_min"]
    lines += [
        "",
        f"soak {seconds:.0f} s: router RSS slope {rs:+.2f} MB/min after a {warmup:.0f} s warm-up "
        f"(target < {SOAK_SLOPE_TARGET:.0f} MB/min) {verdict(abs(rs) < SOAK_SLOPE_TARGET)}"
        + (" (short run: indicative only)" if seconds < 30 else ""),
    ]
    out["errors"] = 0
    return out, lines


# --- start-up ----------------------------------------------------------------------------------


def _time_to_200(argv: list[str], host: str, port: int, env: dict[str, str] | None) -> float:
    """Seconds from ``Popen`` to the first 200 on ``GET /health`` (polling every 2 ms)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        while time.perf_counter() - t0 < 10.0:
            if proc.poll() is not None:
                raise BenchError(f"start-up: {argv[:4]} exited with {proc.returncode}")
            try:
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1.0)
                    sock.connect((host, port))
                    sock.sendall(request)
                    head = sock.recv(64)
                if head.startswith(b"HTTP/1.1 200"):
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.002)
        raise BenchError(f"start-up: {argv[:4]} did not answer 200 on /health within 10 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def startup(env: Env) -> Report:
    """Start to first 200, 5 times each: the router and a bare trio + httptools server."""
    repeats = 5
    prog = Progress("startup", 2 * repeats)
    times: dict[str, list[float]] = {"router": [], "bare": []}
    backends = OPENAI_BACKEND.format(
        name="upstream", url="http://127.0.0.1:9", models="bench-model"
    )
    # The router as installed (pip writes bytecode at install), as the bare server's
    # trio and httptools are: with PYTHONDONTWRITEBYTECODE set, a tree whose bytecode is
    # missing or older than its sources recompiles every changed module at every start
    # (~0.2 s for the whole package here), which is no start-up cost of the router's.
    compileall.compile_dir(ROOT / "src", quiet=1)
    for i in range(repeats):
        port = free_port(env.host)
        cfg = env.workdir / f"startup-{i}.yaml"
        cfg.write_text(
            STREAM_ROUTER_CONFIG.replace("{bind}", f"{env.host_in_url}:{port}") + backends
        )
        prog.step(f"router start {i + 1}/{repeats}")
        times["router"].append(
            _time_to_200(env.router_argv("startup", cfg), env.host, port, env.router_env)
        )
        port = free_port(env.host)
        argv = [sys.executable, str(BENCHES / "upstream.py"), "--host", env.host]
        argv += ["--port", str(port)]
        prog.step(f"bare server start {i + 1}/{repeats}")
        times["bare"].append(_time_to_200(argv, env.host, port, None))
    r, b = median(times["router"]), median(times["bare"])
    lines = [
        f"start-up to first 200 on /health, median of {repeats}: router {r:.3f} s, bare trio + "
        f"httptools server {b:.3f} s (router - bare {r - b:+.3f} s); target < "
        f"{STARTUP_TARGET_S} s {verdict(r < STARTUP_TARGET_S)}",
    ]
    return {
        "router_s": times["router"],
        "bare_s": times["bare"],
        "median_router_s": r,
        "median_bare_s": b,
        "errors": 0,
    }, lines


# --- workers ------------------------------------------------------------------------------------


def _router_with(env: Env, name: str, server_key: str, backends: str) -> Service:
    """A router service on a free port: the streaming config plus one ``server:`` line."""
    port = free_port(env.host)
    config = env.workdir / f"{name}.yaml"
    text = STREAM_ROUTER_CONFIG.replace("{bind}", f"{env.host_in_url}:{port}")
    config.write_text(text.replace("server:\n", f"server:\n  {server_key}\n", 1) + backends)
    return Service(name, env.router_argv(name, config), env.host, port,
                   env.workdir / f"{name}.log", env=env.router_env, ready_path="/health")


def usable_cpus() -> int:
    """The CPUs this process (and so every child) may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_counts(cpus: int) -> tuple[int, ...]:
    """``server.workers`` values to measure: 1, the powers of two below ``cpus``, ``cpus``."""
    counts = {1, max(1, cpus)}
    n = 2
    while n < cpus:
        counts.add(n)
        n *= 2
    return tuple(sorted(counts))


def _own_cpu_seconds() -> float:
    """This process's CPU time plus its finished children's (loadgen ``--workers``)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used so far (``/proc/stat``), NaN
    where unavailable: what the bench's own processes did not use went to others."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait; guest time is already in user
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


#: A process using this many cores or more is saturated (the upstream and each load
#: generator process are single-threaded).
SATURATED_CORES: Final = 0.9


def workers(env: Env) -> Report:
    """Throughput of the router with ``server.workers`` 1, 2, 4 ... up to the CPUs this run
    sees, same upstream, same load (c=64), rounds rotating the order; per-core efficiency
    req/s(N) / (N x req/s(1)), and the cores the router, the upstream and the load generator
    each used (``/proc`` and ``getrusage``), since all of them share the same CPUs."""
    seconds = 2.0 if env.quick else 5.0
    rounds = 1 if env.quick else 3
    cpus = usable_cpus()
    counts = worker_counts(cpus)
    load_procs: int = env.args.workers
    prog = Progress("workers", len(counts) * rounds)
    up = env.upstream("workers-upstream")
    keys = ("rps", "router", "upstream", "loadgen", "machine")
    runs: dict[int, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in counts}
    errors = 0
    backends = OPENAI_BACKEND.format(name="upstream", url=env.url(up), models="bench-model")
    services = {n: _router_with(env, f"router-w{n}", f"workers: {n}", backends) for n in counts}
    with running(up, *services.values()):
        for r in range(rounds):
            for n in counts[r % len(counts):] + counts[:r % len(counts)]:
                prog.step(f"round {r + 1}/{rounds}: {n} worker(s)")
                svc = services[n]
                request = loadgen.build_request(env.host, svc.port, CHAT_PATH)
                before = (cpu_seconds(pid_of(svc)), cpu_seconds(pid_of(up)),
                          _own_cpu_seconds(), _machine_busy_seconds())
                result = loadgen.run_load_parallel(env.host, svc.port, request, 64, seconds,
                                                   workers=load_procs)
                after = (cpu_seconds(pid_of(svc)), cpu_seconds(pid_of(up)),
                         _own_cpu_seconds(), _machine_busy_seconds())
                wall = result.elapsed_s or seconds
                runs[n]["rps"].append(result.rps)
                for key, b, a in zip(keys[1:], before, after, strict=True):
                    runs[n][key].append((a - b) / wall)
                errors += result.error_count
    table = {n: {k: median(v) for k, v in runs[n].items()} for n in counts}
    one = table[1]["rps"]
    for n, row in table.items():
        row["scaling"] = row["rps"] / one if one else float("nan")
        row["efficiency"] = row["scaling"] / n
        row["others"] = row["machine"] - row["router"] - row["upstream"] - row["loadgen"]
        row["rps_per_router_core"] = row["rps"] / row["router"] if row["router"] else float("nan")
    lines = [
        f"{cpus} CPUs usable by this run (os.cpu_count() {os.cpu_count()}), all shared by the "
        f"router's workers, the upstream (one process) and the load generator ({load_procs} "
        f"process{'es' if load_procs > 1 else ''}); c=64, {seconds:g} s per run, {rounds} "
        "round(s), medians; cores = CPU seconds / wall seconds of each; other processes = "
        "the machine's busy time (/proc/stat) minus these three",
        "",
        "| workers | req/s | x 1 worker | per-core efficiency | req/s per router core "
        "| router cores | upstream cores | loadgen cores | other processes | machine busy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in table.items():
        lines.append(
            f"| {n} | {row['rps']:,.0f} | {row['scaling']:.2f} | {row['efficiency']:.2f} "
            f"| {row['rps_per_router_core']:,.0f} | {row['router']:.2f} | {row['upstream']:.2f} "
            f"| {row['loadgen']:.2f} | {row['others']:.2f} | {row['machine']:.2f} / {cpus} |")
    top = table[counts[-1]]
    limits_seen = [
        name for name, cores in (("the upstream", top["upstream"]),
                                 ("the load generator", top["loadgen"] / load_procs))
        if cores >= SATURATED_CORES]
    if top["machine"] >= SATURATED_CORES * cpus:
        limits_seen.append("all CPUs" + (f" ({top['others']:.2f} cores to other processes)"
                                         if top["others"] >= 0.1 else ""))
    bound = (f"; saturated at {counts[-1]} workers: {', '.join(limits_seen)}, so the scaling "
             "is a lower bound of what the router's workers would give on free cores"
             if limits_seen else "")
    lines += [
        "",
        f"workers: 1 -> {counts[-1]} workers x{top['scaling']:.2f}, per-core efficiency "
        f"{top['efficiency']:.2f} (reference: 1.00 = linear); req/s per router core "
        f"{top['rps_per_router_core'] / table[1]['rps_per_router_core']:.2f} x 1 worker's{bound}",
    ]
    out: dict[str, Any] = {
        "cpus": cpus, "cpu_count": os.cpu_count(), "counts": list(counts),
        "loadgen_processes": load_procs, "seconds": seconds, "rounds": rounds,
        "runs": {str(n): v for n, v in runs.items()},
        "table": {str(n): v for n, v in table.items()},
        "saturated": limits_seen, "errors": errors,
    }
    return out, lines


# --- fronts ---------------------------------------------------------------------------------------


def fronts(env: Env) -> Report:
    """The native front vs the hypercorn front (``server.frontend``), same upstream, same
    load, in one run: throughput at c=64, added latency at c=1 (router minus direct), and 64
    paced streams (added TTFB and gap). Both serve HTTP/1.1 here: the cost of the front,
    not what HTTP/2 buys a client."""
    seconds = 2.0 if env.quick else 5.0
    rounds = 1 if env.quick else 3
    frames = 16 if env.quick else STREAM_FRAMES
    names = ("native", "hypercorn")
    prog = Progress("fronts", rounds * 5 + 3)
    up = env.upstream("fronts-upstream")
    backends = OPENAI_BACKEND.format(name="upstream", url=env.url(up), models="bench-model")
    services: dict[str, Service] = {}
    for name in names:
        services[name] = _router_with(env, f"front-{name}", f"frontend: {name}", backends)
    rps: dict[str, list[float]] = {n: [] for n in names}
    lat: dict[str, dict[str, list[float]]] = {
        n: {"p50": [], "p99": []} for n in ("direct", *names)}
    errors = 0

    def load(svc: Service, concurrency: int) -> loadgen.LoadResult:
        nonlocal errors
        request = loadgen.build_request(env.host, svc.port, CHAT_PATH)
        result = loadgen.run_load(env.host, svc.port, request, concurrency, seconds)
        errors += result.error_count
        return result

    streams: dict[str, dict[str, Any]] = {}
    with running(up, *services.values()):
        for svc in services.values():
            load(svc, 64)  # warm-up
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                prog.step(f"round {r + 1}/{rounds}: {name} c=64")
                rps[name].append(load(services[name], 64).rps)
            for name, svc in (("direct", up), *((n, services[n]) for n in order)):
                prog.step(f"round {r + 1}/{rounds}: {name} c=1")
                result = load(svc, 1)
                lat[name]["p50"].append(result.percentile_ms(50))
                lat[name]["p99"].append(result.percentile_ms(99))
        for name, svc in (("direct", up), *((n, services[n]) for n in names)):
            prog.step(f"{name}: 64 streams x {frames} frames")
            _streams(env, svc, "bench-model", 64, 2, 0.001)
            summary = sse_client.summarize(
                _streams(env, svc, "bench-model", 64, frames, STREAM_INTERVAL), STREAM_INTERVAL)
            failed = summary["errors"]
            assert isinstance(failed, dict)
            errors += sum(failed.values())
            streams[name] = summary
    out: dict[str, Any] = {"errors": errors, "rps": rps, "latency_ms": lat, "streams": streams}
    lines = [
        f"fronts (HTTP/1.1 clients; {seconds:g} s runs, {rounds} round(s), median): "
        "added = router minus direct",
        "",
        "| front | req/s c=64 | added p50 ms c=1 | added p99 ms c=1 | added TTFB p99 ms "
        "(64 streams) | added gap p99 ms | stalled |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    direct_stream = streams["direct"]
    for name in names:
        added50 = median(lat[name]["p50"]) - median(lat["direct"]["p50"])
        added99 = median(lat[name]["p99"]) - median(lat["direct"]["p99"])
        st = streams[name]
        lines.append(
            f"| {name} | {median(rps[name]):,.0f} | {added50:.3f} | {added99:.3f} "
            f"| {_added(st, direct_stream, 'ttfb_p99_ms'):+.3f} "
            f"| {_added(st, direct_stream, 'gap_p99_ms'):+.3f} | {st['stalled']} |")
    native, hyper = median(rps["native"]), median(rps["hypercorn"])
    lines += ["", f"fronts: hypercorn/native throughput {hyper / native if native else 0:.2f}"]
    return out, lines


# --- limits (issue 11) -------------------------------------------------------------------------

LIMITS_KEY: Final = "sk-bench-limits-0123456789"
LIMITS_TARGETS: Final = ("floor", "off", "memory", "redis")
#: "Memory limits on" costs at most this much throughput (issue 11).
LIMITS_MEMORY_TARGET: Final = 0.95
#: Auth on (one blocking key) and two request limits on every request: the key's own and a
#: global one, both far above the load (nothing is refused; the work is what is measured).
LIMITS_ON: Final = f"""\
api_keys:
  mode: blocking
  api_keys: [{{key: "{LIMITS_KEY}", id: bench, rate_limit: 1000000000}}]
rate_limiting:
  limits:
    global: {{requests_per_second: 1000000000, burst_capacity: 1000000000}}
"""


class _RedisServer:
    """A redis-server child (loopback, nothing on disk) for the limits scenario."""

    def __init__(self, env: Env) -> None:
        self.binary = shutil.which("redis-server")
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = env.workdir / "limits-redis.log"
        self.dir = env.workdir / "limits-redis"

    def __enter__(self) -> _RedisServer:
        assert self.binary is not None
        self.dir.mkdir(exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--bind", self.host, "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.__exit__()
        raise BenchError(f"redis-server did not start:\n{self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def admission_round_trip(self, calls: int) -> float:
        """Median microseconds of one ``EVALSHA`` of the router's admission script for two
        request limits (what a limited request sends), from a bare blocking client: the
        one round trip the Redis limits may add."""
        # The only place a bench scenario reads continuum: the script it must time.
        import hiredis

        from continuum.core.ratelimit import ADMIT_SCRIPT, Rate, RateCheck, admission_arguments

        checks = [RateCheck("api_key", "bench", Rate(1e9, 1e9)),
                  RateCheck("global", "", Rate(1e9, 1e9))]
        keys, args = admission_arguments(checks, "bench-rtt:")
        reader = hiredis.Reader()
        with socket.create_connection((self.host, self.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def call(*command: str | int) -> object:
                sock.sendall(hiredis.pack_command(command))  # type: ignore[arg-type]
                while (reply := reader.gets()) is False:
                    reader.feed(sock.recv(65536))
                return reply

            sha = call("SCRIPT", "LOAD", ADMIT_SCRIPT)
            assert isinstance(sha, bytes), sha
            times = []
            for _ in range(calls):
                started = time.perf_counter_ns()
                call("EVALSHA", sha.decode(), len(keys), *keys, *args)
                times.append(time.perf_counter_ns() - started)
        return statistics.median(times) / 1000.0


def _bench_router(env: Env, name: str, upstream: Service, extra: str) -> Service:
    """A router on a free port: ``ROUTER_CONFIG`` with the top-level blocks ``extra``."""
    port = free_port(env.host)
    config = env.workdir / f"{name}.yaml"
    config.write_text(ROUTER_CONFIG.format(
        bind=f"{env.host_in_url}:{port}", upstream_url=env.url(upstream), extra=extra))
    return Service(name, env.router_argv(name, config), env.host, port,
                   env.workdir / f"{name}.log", env=env.router_env, ready_path="/health")


Samples = dict[str, dict[str, list[float]]]


def _interleaved(env: Env, services: dict[str, Service], requests: dict[str, bytes],
                 prog: Progress, duration: float, rounds: int) -> tuple[Samples, int]:
    """Same-run comparison of ``services`` (running): a warm-up each, then ``rounds`` rounds
    of c=64 (throughput) and c=1 (latency) on every target, the order rotating per round.
    Per target and round: ``rps`` at c=64, ``p50``/``p99`` at c=1, and ``cpu64``/``cpu1``,
    the process tree's CPU µs per answered request (``/proc``) at each. Returns the samples
    and the request errors."""
    targets = list(services)
    samples: Samples = {
        t: {"rps": [], "p50": [], "p99": [], "cpu64": [], "cpu1": []} for t in targets}
    errors = 0
    for name, svc in services.items():  # warm-up (connections, caches, Redis scripts)
        loadgen.run_load(env.host, svc.port, requests[name], 64, 0.5)
        loadgen.run_load(env.host, svc.port, requests[name], 1, 0.3)
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for c in (64, 1):
            for name in order:
                prog.step(f"round {r + 1}/{rounds} c={c} {name}")
                svc = services[name]
                cpu = cpu_seconds(pid_of(svc))
                res = loadgen.run_load(env.host, svc.port, requests[name], c, duration)
                cpu = cpu_seconds(pid_of(svc)) - cpu
                errors += res.error_count
                s = samples[name]
                s[f"cpu{c}"].append(cpu / res.ok * 1e6 if res.ok else float("nan"))
                if c == 64:
                    s["rps"].append(res.rps)
                else:
                    s["p50"].append(res.percentile_ms(50))
                    s["p99"].append(res.percentile_ms(99))
    return samples, errors


def _paired_ratio(samples: Samples, a: str, b: str, key: str = "rps") -> float:
    """Median over rounds of a/b, each round's pair measured back to back."""
    return median([x / y if y else float("nan")
                   for x, y in zip(samples[a][key], samples[b][key], strict=True)])


def _paired_diff(samples: Samples, a: str, b: str, key: str = "p50") -> float:
    """Median over rounds of a - b."""
    return median([x - y for x, y in zip(samples[a][key], samples[b][key], strict=True)])


def limits(env: Env) -> Report:
    """The router with auth and limits off, with limits in memory, with limits in Redis
    (a redis-server on loopback), against the floor in the same run: throughput at c=64
    and p50 at c=1, rounds rotating the target order."""
    duration = 2.0 if env.quick else 5.0
    rounds = 1 if env.quick else 3
    up = env.upstream("limits-upstream")
    floor = env.floor("limits-floor", up)
    redis_available = shutil.which("redis-server") is not None
    targets = [t for t in LIMITS_TARGETS if t != "redis" or redis_available]
    prog = Progress("limits", rounds * len(targets) * 2 + 1)
    rtt_us = float("nan")
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(_RedisServer(env)) if redis_available else None
        services: dict[str, Service] = {"floor": floor}
        for name in targets[1:]:
            extra = "" if name == "off" else LIMITS_ON
            if name == "redis":
                assert redis is not None
                extra += (f"  storage: redis\n  redis:\n"
                          f"    url: redis://{redis.host}:{redis.port}/0\n")
            services[name] = _bench_router(env, f"limits-{name}", up, extra)
        stack.enter_context(running(up, *services.values()))
        requests = {name: loadgen.build_request(
            env.host, svc.port, CHAT_PATH, headers=[("Authorization", f"Bearer {LIMITS_KEY}")])
            for name, svc in services.items()}
        samples, errors = _interleaved(env, services, requests, prog, duration, rounds)
        if redis is not None:
            prog.step("one admission round trip, bare client")
            rtt_us = redis.admission_round_trip(2000 if env.quick else 10000)

    def ratio(a: str, b: str) -> float:
        return _paired_ratio(samples, a, b)

    def added(a: str, b: str) -> float:
        return _paired_diff(samples, a, b)

    out: dict[str, Any] = {
        "rounds": rounds, "duration_s": duration, "samples": samples, "errors": errors,
        "ratio_off_floor": ratio("off", "floor"),
        "ratio_memory_off": ratio("memory", "off"),
        "added_p50_ms_memory": added("memory", "off"),
        "admission_rtt_us": rtt_us,
    }
    lines = [
        "| target | c=64 req/s | vs floor | c=1 p50 ms | c=1 p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in targets:
        s = samples[name]
        lines.append(f"| {name} | {median(s['rps']):,.0f} | {ratio(name, 'floor'):.2f} "
                     f"| {median(s['p50']):.3f} | {median(s['p99']):.3f} |")
    memory_ratio = out["ratio_memory_off"]
    lines += [
        "",
        f"limits: memory on vs off: throughput x{memory_ratio:.3f} (target >= "
        f"{LIMITS_MEMORY_TARGET}) {verdict(memory_ratio >= LIMITS_MEMORY_TARGET)}; added p50 "
        f"c=1 {out['added_p50_ms_memory'] * 1000:+.0f} us (reference)",
    ]
    if redis_available:
        out["ratio_redis_off"] = ratio("redis", "off")
        out["added_p50_ms_redis"] = added("redis", "off")
        over_memory_us = (added("redis", "memory")) * 1000
        ok = over_memory_us <= 1.5 * rtt_us
        lines.append(
            f"limits: Redis on vs off: throughput x{out['ratio_redis_off']:.3f} (reference); "
            f"added p50 c=1 {out['added_p50_ms_redis'] * 1000:+.0f} us, of which "
            f"{over_memory_us:+.0f} us over memory limits vs one admission round trip "
            f"{rtt_us:.0f} us from a bare client (target: one round trip, <= 1.5x) "
            f"{verdict(ok)}")
    else:
        lines.append("limits: Redis not measured: redis-server is not installed")
    return out, lines


# --- features (issue 15, item 8) ----------------------------------------------------------------

FEATURES_TARGETS: Final = ("floor", "core", "off", "on")
#: Blocks added to ``ROUTER_CONFIG``: ``core`` is the ``core`` scenario's router as it is
#: (defaults: metrics on); ``off`` switches off what can be (metrics; api keys, limits and
#: tracing are off by default); ``on`` has a blocking key and two memory limits (``limits``'
#: set-up), metrics and tracing.
FEATURES_CONFIG: Final = {
    "core": "",
    "off": "metrics:\n  enabled: false\n",
    "on": LIMITS_ON + "metrics:\n  enabled: true\ntracing:\n  enabled: true\n",
}
#: "Off costs nothing": off/floor >= core/floor x (1 - this), i.e. off/core >= 0.9 (median of
#: per-round ratios). Three identical routers measured this way on the shared 2-core machine
#: (load average ~5) gave medians of 0.90 to 1.07 of each other over 3 rounds: throughput
#: noise is +-10% there, so a smaller tolerance would report noise.
FEATURES_OFF_TOLERANCE: Final = 0.10
#: ... and off's CPU per request <= core's x (1 + this). The same identical routers stayed
#: within 1.3% of each other in CPU per request, the steadier figure.
FEATURES_OFF_CPU_TOLERANCE: Final = 0.05
#: "On costs little": on/off throughput at c=64 (and, steadier, CPU per request on/off at
#: most its inverse).
FEATURES_ON_TARGET: Final = 0.9


#: What each router answers when its switches took: (a chat request without the key,
#: ``GET /metrics``). Checked before measuring, so a config that silently did not apply
#: cannot pass for "features on".
FEATURES_EXPECT: Final = {"core": (200, 200), "off": (200, 404), "on": (401, 200)}


def _check_features(env: Env, services: dict[str, Service]) -> list[str]:
    """The routers whose answers do not match ``FEATURES_EXPECT``, each as a sentence."""
    wrong = []
    for name, expected in FEATURES_EXPECT.items():
        port = services[name].port
        got = (http_request(env.host, port, "POST", CHAT_PATH, loadgen.CHAT_BODY)[0],
               http_request(env.host, port, "GET", "/metrics")[0])
        if got != expected:
            wrong.append(f"features: {name} answered a chat request without the key and GET "
                         f"/metrics with {got}, expected {expected}: its config did not take "
                         "effect; not measured")
    return wrong


def _otel_sdk_installed(env: Env) -> bool:
    """Can the router's interpreter import the OpenTelemetry SDK (spans), or does
    ``tracing.enabled`` only generate and forward ``traceparent``?"""
    probe = [sys.executable, "-c", "import opentelemetry.sdk.trace"]
    return subprocess.run(probe, env=env.router_env, capture_output=True, check=False,
                          timeout=30).returncode == 0


def features(env: Env) -> Report:
    """The router with the newer issues' features off and on, next to the ``core`` router
    and the floor in the same run (issue 15, item 8): throughput at c=64, latency at c=1,
    CPU per request, rounds rotating the target order."""
    duration = 2.0 if env.quick else 5.0
    rounds = 1 if env.quick else 3
    up = env.upstream("features-upstream")
    services: dict[str, Service] = {"floor": env.floor("features-floor", up)}
    for name, extra in FEATURES_CONFIG.items():
        services[name] = _bench_router(env, f"features-{name}", up, extra)
    spans = _otel_sdk_installed(env)
    tracing = ("spans (opentelemetry-sdk installed, console exporter) and traceparent" if spans
               else "traceparent only (opentelemetry-sdk not installed)")
    prog = Progress("features", rounds * len(FEATURES_TARGETS) * 2)
    with running(up, *services.values()):
        if wrong := _check_features(env, services):  # e.g. --router-cmd runs something else
            return {"errors": len(wrong), "not_measured": wrong}, wrong
        # Every target gets the same request bytes: the key is what ``on`` requires.
        requests = {name: loadgen.build_request(
            env.host, svc.port, CHAT_PATH, headers=[("Authorization", f"Bearer {LIMITS_KEY}")])
            for name, svc in services.items()}
        samples, errors = _interleaved(env, services, requests, prog, duration, rounds)
    ratios = {f"{a}_{b}": _paired_ratio(samples, a, b)
              for a, b in (("core", "floor"), ("off", "floor"), ("on", "floor"),
                           ("off", "core"), ("on", "off"))}
    cpu = {f"{a}_{b}": _paired_ratio(samples, a, b, "cpu64")
           for a, b in (("off", "core"), ("on", "off"))}
    added_p50_us = _paired_diff(samples, "on", "off") * 1000
    off_ok = ratios["off_core"] >= 1 - FEATURES_OFF_TOLERANCE
    off_cpu_ok = cpu["off_core"] <= 1 + FEATURES_OFF_CPU_TOLERANCE
    on_ok = ratios["on_off"] >= FEATURES_ON_TARGET
    on_cpu_ok = cpu["on_off"] <= 1 / FEATURES_ON_TARGET
    out: dict[str, Any] = {
        "rounds": rounds, "duration_s": duration, "samples": samples, "errors": errors,
        "tracing": "spans" if spans else "traceparent", "ratios": ratios,
        "cpu_ratios": cpu, "added_p50_us_on_off": added_p50_us,
        "off_tolerance": FEATURES_OFF_TOLERANCE,
        "off_cpu_tolerance": FEATURES_OFF_CPU_TOLERANCE, "on_target": FEATURES_ON_TARGET,
        "pass": {"off": off_ok, "off_cpu": off_cpu_ok, "on": on_ok, "on_cpu": on_cpu_ok},
    }
    lines = [
        f"core = the core scenario's router; off = metrics off too (keys, limits, tracing off "
        f"by default); on = a blocking key + two memory limits + metrics + tracing: {tracing}. "
        f"{duration:g} s per run, {rounds} round(s), medians; CPU from /proc",
        "",
        "| target | c=64 req/s | vs floor | CPU us/req c=64 | CPU us/req c=1 | c=1 p50 ms "
        "| c=1 p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in FEATURES_TARGETS:
        s = samples[name]
        lines.append(
            f"| {name} | {median(s['rps']):,.0f} | {_paired_ratio(samples, name, 'floor'):.2f} "
            f"| {median(s['cpu64']):.0f} | {median(s['cpu1']):.0f} | {median(s['p50']):.3f} "
            f"| {median(s['p99']):.3f} |")
    lines += [
        "",
        f"features off costs nothing: off/floor {ratios['off_floor']:.2f} vs core/floor "
        f"{ratios['core_floor']:.2f}: off/core x{ratios['off_core']:.3f} (target >= "
        f"{1 - FEATURES_OFF_TOLERANCE:.2f}: the noise tolerance) {verdict(off_ok)}; CPU/request "
        f"off/core x{cpu['off_core']:.3f} (target <= {1 + FEATURES_OFF_CPU_TOLERANCE:.2f}) "
        f"{verdict(off_cpu_ok)}",
        f"features on costs little: on/floor {ratios['on_floor']:.2f}; on/off throughput "
        f"x{ratios['on_off']:.3f} (target >= {FEATURES_ON_TARGET}) {verdict(on_ok)}; CPU/request "
        f"on/off x{cpu['on_off']:.3f} (the same target in CPU: <= {1 / FEATURES_ON_TARGET:.2f}) "
        f"{verdict(on_cpu_ok)}; added p50 c=1 {added_p50_us:+.0f} us (reference)",
    ]
    return out, lines


# --- external tools ----------------------------------------------------------------------------

HEY_BODY: Final = '{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"Hello"}]}'


def external_commands(url: str, seconds: int = 5) -> dict[str, list[str]]:
    """The ``wrk`` and ``hey`` command lines (also documented in benches/README.md)."""
    lua = str(ROOT / "scripts" / "chat_completion.lua")
    return {
        "wrk": ["wrk", "-t1", "-c64", f"-d{seconds}s", "--latency", "-s", lua, url],
        "hey": [
            "hey",
            "-z",
            f"{seconds}s",
            "-c",
            "64",
            "-m",
            "POST",
            "-T",
            "application/json",
            "-d",
            HEY_BODY,
            url,
        ],
    }


def external(env: Env) -> Report:
    """Run ``wrk`` and ``hey`` briefly against a router, when they are on PATH."""
    present = {tool: shutil.which(tool) for tool in ("wrk", "hey")}
    lines: list[str] = []
    out: dict[str, Any] = {"errors": 0}
    if not any(present.values()):
        lines.append("external: neither wrk nor hey is on PATH; skipped (not a failure)")
        return out, lines
    upstream = env.upstream("ext-upstream")
    backends = OPENAI_BACKEND.format(
        name="upstream", url=env.url(upstream), models="bench-model, gpt-3.5-turbo"
    )
    router = env.router("ext-router", backends)
    with running(upstream, router):
        url = f"{env.url(router)}{CHAT_PATH}"
        for tool, argv in external_commands(url, 3).items():
            if not present[tool]:
                lines.append(f"external: {tool} is not on PATH; skipped")
                continue
            print(f"[external] running {' '.join(argv)}", file=sys.stderr, flush=True)
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            out[tool] = proc.stdout
            lines += [
                f"external: {tool} (exit {proc.returncode})",
                "```",
                proc.stdout.strip(),
                "```",
            ]
    return out, lines


# --- concurrency -------------------------------------------------------------------------------


def concurrency_levels(env: Env) -> tuple[int, ...]:
    """100 and 1,000, then as many as the fd limit allows: the router holds two sockets per
    request (client and upstream), plus a margin for everything else."""
    if env.args.concurrency_levels:
        return tuple(env.args.concurrency_levels)
    if env.quick:
        return CONCURRENCY_LEVELS_QUICK
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    top = min(CONCURRENCY_MAX, (soft - 512) // 2)
    return CONCURRENCY_LEVELS + ((top,) if top > CONCURRENCY_LEVELS[-1] else ())


def upstream_connections(env: Env, upstream: Service) -> int:
    """Connections the bench upstream accepted so far (``GET /bench/stats``)."""
    status, body = http_request(env.host, upstream.port, "GET", "/bench/stats")
    if status != 200:
        raise BenchError(f"upstream /bench/stats answered {status}")
    return int(json.loads(body)["connections"])


def concurrency(env: Env) -> Report:
    """c concurrent clients against a 500 ms upstream: direct, floor and router side by side."""
    levels = concurrency_levels(env)
    duration = env.args.concurrency_duration or (1.5 if env.quick else 20.0)
    upstream = env.upstream("conc-upstream", "--latency", str(SLOW_UPSTREAM_S))
    floor = env.floor("conc-floor", upstream)
    port = free_port(env.host)
    config = env.workdir / "conc-router.yaml"
    config.write_text(CONCURRENCY_ROUTER_CONFIG.format(
        bind=f"{env.host_in_url}:{port}", pool=max(levels), url=env.url(upstream)))
    router = Service("conc-router", env.router_argv("conc-router", config), env.host, port,
                     env.workdir / "conc-router.log", env=env.router_env, ready_path="/health")
    targets = {"direct": upstream, "floor": floor, "router": router}
    names = tuple(targets)
    prog = Progress("concurrency", len(levels) * len(names))
    table: dict[str, dict[str, dict[str, Any]]] = {}
    with running(upstream, floor, router):
        for i, c in enumerate(levels):
            # Long enough for several waves of c requests; at the top level the router may be
            # CPU-bound, so its clients wait longer than one wave before counting a timeout.
            seconds = max(duration, 4 * SLOW_UPSTREAM_S) if c <= 1000 else 2 * duration
            timeout = max(10.0, c / 100)
            order = names[i % 3:] + names[:i % 3]
            for name in order:
                svc = targets[name]
                prog.step(f"c={c} {name} ({seconds:g} s)")
                request = loadgen.build_request(env.host, svc.port, CHAT_PATH)
                # Warm-up: the connections of this concurrency exist before the clock runs.
                # By request count, so it ends with no request in flight: a client leaving
                # mid-request makes the router drop that upstream connection (the floor
                # keeps it), and the measured run would start by reopening them all.
                loadgen.run_load(env.host, svc.port, request, c, total=2 * c, timeout_s=timeout)
                connects = upstream_connections(env, upstream)
                cpu = cpu_seconds(pid_of(svc))
                res = loadgen.run_load(env.host, svc.port, request, c, seconds, timeout_s=timeout)
                cpu = cpu_seconds(pid_of(svc)) - cpu
                # minus one: the second /bench/stats request's own connection
                connects = upstream_connections(env, upstream) - connects - 1
                refused = sum(n for k, n in res.errors.items() if k in ("status_429", "status_503"))
                table.setdefault(str(c), {})[name] = {
                    "rps": round(res.rps, 1),
                    "p50_ms": res.percentile_ms(50),
                    "p99_ms": res.percentile_ms(99),
                    # The proxy's own CPU; for direct, the upstream's (a reference only).
                    "cpu_us_per_req": cpu / res.ok * 1e6 if res.ok else float("nan"),
                    "upstream_connects": connects,
                    "requests": res.ok,
                    "refused_429_503": refused,
                    "errors": res.error_count,
                    "error_kinds": dict(res.errors),
                }
    lines = [
        f"closed loop, upstream answers after {SLOW_UPSTREAM_S * 1000:.0f} ms; router with "
        "pool_max_idle_per_host 100 (the guide's default), connection_pool_size = the top "
        f"level; {duration:g} s per point; added p50 = minus direct's p50; CPU from /proc",
        "",
        "| c | direct req/s | floor req/s | router req/s | router/floor | added p50 floor/router "
        "ms | p99 direct/floor/router ms | CPU us/req floor/router | router/floor CPU "
        "| upstream connects floor/router | 429+503 router | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts: list[str] = []
    for conc, row in table.items():
        d, f, r = row["direct"], row["floor"], row["router"]
        rps_ratio = r["rps"] / f["rps"] if f["rps"] else float("nan")
        cpu_ratio = r["cpu_us_per_req"] / f["cpu_us_per_req"] if f["cpu_us_per_req"] else float(
            "nan")
        added_f = f["p50_ms"] - d["p50_ms"]
        added_r = r["p50_ms"] - d["p50_ms"]
        r.update(ratio_vs_floor=rps_ratio, cpu_ratio_vs_floor=cpu_ratio, added_p50_ms=added_r)
        f["added_p50_ms"] = added_f
        errors = d["errors"] + f["errors"] + r["errors"]
        lines.append(
            f"| {conc} | {d['rps']:,.0f} | {f['rps']:,.0f} | {r['rps']:,.0f} | {rps_ratio:.2f} "
            f"| {added_f:+.1f} / {added_r:+.1f} "
            f"| {d['p99_ms']:.0f} / {f['p99_ms']:.0f} / {r['p99_ms']:.0f} "
            f"| {f['cpu_us_per_req']:.0f} / {r['cpu_us_per_req']:.0f} | {cpu_ratio:.2f} "
            f"| {f['upstream_connects']} / {r['upstream_connects']} | {r['refused_429_503']} "
            f"| {errors} |"
        )
        scope = "target" if int(conc) == CONCURRENCY_TARGET_C else "reference"
        verdicts.append(
            f"concurrency c={conc} ({scope}): router/floor req/s {rps_ratio:.2f} (>= "
            f"{CONC_RPS_RATIO_TARGET}) {verdict(rps_ratio >= CONC_RPS_RATIO_TARGET)}; CPU/request "
            f"{cpu_ratio:.2f} x floor (<= {CONC_CPU_RATIO_TARGET}) "
            f"{verdict(cpu_ratio <= CONC_CPU_RATIO_TARGET)}; added p50 {added_r:+.1f} ms (<= "
            f"{CONC_ADDED_P50_TARGET_MS:g}) {verdict(added_r <= CONC_ADDED_P50_TARGET_MS)}; "
            f"429/503 {r['refused_429_503']} (0) {verdict(r['refused_429_503'] == 0)}"
        )
    if CONCURRENCY_TARGET_C not in levels:
        verdicts.append(f"(the targets are for c={CONCURRENCY_TARGET_C}; this run did not "
                        "measure it: quick mode or --concurrency-levels)")
    out: dict[str, Any] = {
        "levels": list(levels), "duration_s": duration, "latency_s": SLOW_UPSTREAM_S,
        "table": table,
        "errors": sum(int(v["errors"]) for row in table.values() for v in row.values()),
    }
    return out, [*lines, "", *verdicts]


EXTRA: Final[dict[str, Callable[[Env], Report]]] = {
    "concurrency": concurrency,
    "streaming": streaming,
    "translation": translation,
    "idle": idle,
    "soak": soak,
    "startup": startup,
    "workers": workers,
    "fronts": fronts,
    "limits": limits,
    "features": features,
    "external": external,
}
