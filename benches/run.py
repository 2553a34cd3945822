"""``just bench``: the router against the floor proxy and the bare upstream, in one run.

Starts, as child processes on free ports of ``--host`` (127.0.0.1 by default):

* ``upstream`` -- ``benches/upstream.py``, a zero-latency OpenAI-shaped server;
* ``floor``    -- ``benches/floor_proxy.py``, the bare trio + httptools proxy (the baseline);
* ``router``   -- ``python -m continuum run CONFIG`` (or ``--router-cmd``), both proxies in front
  of the same upstream;
* ``router-rr5``, ``router-ll5`` -- the ``strategies`` scenario: two more routers with five
  backends each (all on the same upstream, or spread over ``--strategy-upstreams`` upstreams),
  RoundRobin and LeastLatency (fallback RoundRobin); their throughput ratio is issue 3's
  "LeastLatency within 10% of RoundRobin".

``--scenarios`` picks what runs (default: all but ``external``): ``core`` and ``strategies``
here; ``sweep``, ``concurrency``, ``streaming``, ``translation``, ``idle``, ``soak``, ``startup``,
``workers``, ``fronts``, ``limits``, ``features`` and ``external`` in ``scenarios.py`` (each
starts its own processes, except ``sweep``, which reuses the core ones).

Then: the router's idle RSS, 10,000 requests, its RSS again; a warm-up of each target; and
``--rounds`` rounds in which every target (``direct`` = the upstream itself, ``floor``,
``router``, ``router-rr5``, ``router-ll5``) gets the same load generator at ``--concurrency``
(throughput) and at concurrency 1 (latency), target order rotating every round so noise hits
all alike. Figures are the median over rounds; ratios are computed inside each round, then the
median taken.

Prints a Markdown table and the target lines, writes the same to ``bench-results/latest.json``.
Exit code 0 unless a process failed to start or a request failed (targets are reported as
PASS/MISS, not asserted). Everything started is killed on exit, Ctrl-C included.

``--router-cmd`` is a command template with ``{python}``, ``{host}``, ``{port}``, ``{upstream}``
(HOST:PORT), ``{upstream_url}`` and ``{config}``; a leading ``python`` means this interpreter.
Example, with a second floor proxy standing in for the router::

    python benches/run.py --quick \\
        --router-cmd "python benches/floor_proxy.py --port {port} --upstream {upstream}"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NoReturn

import loadgen
import plots
import scenarios as scenarios_mod
import sse_client
from procs import (
    ROOT,
    BenchError,
    Service,
    cpu_seconds,
    free_port,
    http_request,
    router_argv,
    rss_mb,
)

BENCHES: Final = ROOT / "benches"
CHAT_PATH: Final = "/v1/chat/completions"
DEFAULT_ROUTER_CMD: Final = "{python} -m continuum run {config}"
CORE_TARGETS: Final = ("direct", "floor", "router")
#: The strategy pair: five backends each, RoundRobin vs LeastLatency (issue 3's bench).
STRATEGY_TARGETS: Final = ("router-rr5", "router-ll5")
STRATEGY_ROUTING: Final = {
    "router-rr5": "{strategy: RoundRobin}",
    "router-ll5": "{strategy: LeastLatency, fallback_strategy: RoundRobin}",
}
STRATEGY_BACKENDS: Final = 5
#: Scenario -> the targets ``measure`` rotates through (the others run in ``scenarios.py``).
SCENARIOS: Final[dict[str, tuple[str, ...]]] = {
    "core": CORE_TARGETS,
    "strategies": STRATEGY_TARGETS,
    "sweep": (),
    **{name: () for name in scenarios_mod.EXTRA},
}
#: What runs without ``--scenarios``: everything but ``external`` (``--external`` adds it).
DEFAULT_SCENARIOS: Final = [s for s in SCENARIOS if s != "external"]
ROUTER_HINT: Final = (
    "\n(to exercise the bench without the router, stand a second floor proxy in for it: "
    '--router-cmd "python benches/floor_proxy.py --port {port} --upstream {upstream}")'
)

# Targets (the performance budget in docs/design.md).
RATIO_TARGET: Final = 0.6
ADDED_P50_TARGET_MS: Final = 0.3
ADDED_P99_TARGET_MS: Final = 0.5
IDLE_RSS_TARGET_MB: Final = 40.0
HEADROOM_TARGET: Final = 3.0
STRATEGY_RATIO_TARGET: Final = 0.9  # issue 3: LeastLatency(5) within 10% of RoundRobin(5)
ISSUE15_RATIO_TARGET: Final = 0.8  # issue 15 item 3: router/floor at c=64
#: The core targets whose CPU per request (``/proc``) is measured at the throughput
#: concurrency: the router's (its whole process tree) and the floor's.
CPU_TARGETS: Final = ("router", "floor")
BUSY_WARN: Final = 0.25  # warn when the CPUs are this busy before the bench starts

#: The core router: the scenarios' bench router config with no extra blocks.
CONFIG_TEMPLATE: Final = scenarios_mod.ROUTER_CONFIG.replace("{extra}", "")

#: The strategy routers: the same head with a ``routing:`` block, backends appended.
STRATEGY_CONFIG_HEAD: Final = (
    scenarios_mod.ROUTER_CONFIG.partition("{extra}")[0] + "routing: {routing}\nbackends:\n"
)
STRATEGY_BACKEND: Final = """\
  - name: b{n}
    url: "{upstream_url}"
    models: ["bench-model"]
"""


def strategy_config(bind: str, routing: str, upstream_urls: list[str]) -> str:
    """A router config with ``STRATEGY_BACKENDS`` backends b1..b5 spread over the upstreams."""
    backends = "".join(
        STRATEGY_BACKEND.format(n=i + 1, upstream_url=upstream_urls[i % len(upstream_urls)])
        for i in range(STRATEGY_BACKENDS)
    )
    return STRATEGY_CONFIG_HEAD.format(bind=bind, routing=routing) + backends


def verify_target(name: str, host: str, port: int) -> list[str]:
    """Check one target answers the bench request correctly; return warnings (SSE only).

    A wrong answer to the measured request raises ``BenchError``: measuring it would be moot.
    """
    status, body = http_request(host, port, "POST", CHAT_PATH, loadgen.CHAT_BODY)
    try:
        choices = json.loads(body)["choices"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        choices = None
    if not choices:
        raise BenchError(f"{name}: POST {CHAT_PATH} answered {status} {body[:300]!r}")
    warnings: list[str] = []
    stream_body = loadgen.CHAT_BODY[:-1] + b',"stream":true}'
    try:
        status, body = http_request(host, port, "POST", CHAT_PATH, stream_body)
    except OSError as exc:
        warnings.append(f"{name}: streaming request failed: {exc}")
    else:
        if status != 200 or not body.rstrip().endswith(b"data: [DONE]"):
            warnings.append(f"{name}: streaming request answered {status} {body[-120:]!r}")
    return warnings


def cpu_busy(interval_s: float = 0.5) -> float | None:
    """Share of all CPUs busy over ``interval_s`` (``/proc/stat``), None where unavailable.

    Sampled before anything starts: a busy machine (a test suite running alongside) makes
    every figure noisy, the strategy pair's 10% margin first of all.
    """

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else None


def json_safe(value: Any) -> Any:
    """NaN (no sample) becomes null, so the file stays strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b, each round's pair measured back to back (a round with
    b = 0 counts as no sample)."""
    return median([x / y if y else float("nan") for x, y in zip(a, b, strict=True)])


def paired_diff(a: list[float], b: list[float]) -> float:
    """Median over rounds of a - b."""
    return median([x - y for x, y in zip(a, b, strict=True)])


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (which stop children) run."""

    def handler(signum: int, frame: object) -> NoReturn:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Bench:
    """One bench run: settings, the load calls, and the collected results."""

    def __init__(self, args: argparse.Namespace, ports: dict[str, int]) -> None:
        self.args = args
        self.host: str = args.host
        self.ports = ports
        self.requests = {
            name: loadgen.build_request(self.host, port, CHAT_PATH) for name, port in ports.items()
        }
        self.errors: dict[str, dict[str, int]] = {name: {} for name in ports}

    def sweep_load(self, target: str, concurrency: int, duration_s: float) -> loadgen.LoadResult:
        return self.load(target, concurrency, duration_s)

    def load(
        self, target: str, concurrency: int, duration_s: float | None, total: int | None = None
    ) -> loadgen.LoadResult:
        res = loadgen.run_load_parallel(
            self.host,
            self.ports[target],
            self.requests[target],
            concurrency,
            duration_s=duration_s,
            total=total,
            workers=self.args.workers,
        )
        for kind, n in res.errors.items():
            self.errors[target][kind] = self.errors[target].get(kind, 0) + n
        if res.ok == 0:
            self.errors[target]["no_response"] = self.errors[target].get("no_response", 0) + 1
        return res


def selected_targets(scenarios: list[str]) -> tuple[str, ...]:
    """The measured targets of ``scenarios``, in ``SCENARIOS`` order."""
    return tuple(t for name, ts in SCENARIOS.items() if name in scenarios for t in ts)


def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    host: str = args.host
    scenarios: list[str] = args.scenarios
    targets = selected_targets(scenarios)
    core_procs = "core" in scenarios or "sweep" in scenarios
    # "direct" is the upstream's port: always started, measured only in the core scenario.
    procs = (*CORE_TARGETS, *targets) if core_procs else ("direct", *targets)
    ports = {name: free_port(host) for name in dict.fromkeys(procs)}
    host_in_url = f"[{host}]" if ":" in host else host
    upstream = f"{host_in_url}:{ports['direct']}"
    router_env = dict(os.environ)
    src = str(ROOT / "src")  # run the in-tree router even when it is not installed
    router_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (src, router_env.get("PYTHONPATH", "")) if p
    )
    py = sys.executable

    def upstream_service(name: str, port: int) -> Service:
        argv = [py, str(BENCHES / "upstream.py"), "--host", host, "--port", str(port)]
        return Service(name, argv, host, port, workdir / f"{name}.log")

    def router_service(name: str, config_text: str) -> Service:
        port = ports[name]
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(config_text.replace("{bind}", f"{host_in_url}:{port}"))
        fields = {
            "python": sys.executable,
            "host": host,
            "port": str(port),
            "upstream": upstream,
            "upstream_url": f"http://{upstream}",
            "config": str(config_path),
        }
        return Service(
            name,
            router_argv(args.router_cmd, fields),
            host,
            port,
            workdir / f"{name}.log",
            env=router_env,
            hint=ROUTER_HINT if args.router_cmd == DEFAULT_ROUTER_CMD else "",
        )

    services = [upstream_service("upstream", ports["direct"])]
    routers: dict[str, Service] = {}
    if core_procs:
        floor_argv = [py, str(BENCHES / "floor_proxy.py"), "--host", host]
        floor_argv += ["--port", str(ports["floor"]), "--upstream", upstream]
        services.append(Service("floor", floor_argv, host, ports["floor"], workdir / "floor.log"))
        config = CONFIG_TEMPLATE.replace("{upstream_url}", f"http://{upstream}")
        routers["router"] = router_service("router", config)
    if "strategies" in scenarios:
        extra = [free_port(host) for _ in range(args.strategy_upstreams - 1)]
        services += [upstream_service(f"upstream{i + 2}", p) for i, p in enumerate(extra)]
        upstream_urls = [f"http://{host_in_url}:{p}" for p in (ports["direct"], *extra)]
        for name in STRATEGY_TARGETS:
            config = strategy_config("{bind}", STRATEGY_ROUTING[name], upstream_urls)
            routers[name] = router_service(name, config)
    services += routers.values()
    results: dict[str, Any] = {"scenarios": scenarios, "targets": list(targets)}
    extra_lines: list[str] = []
    if not (core_procs or targets):
        services = []
    try:
        for svc in services:
            svc.start()
            t0 = time.monotonic()
            svc.wait_ready()
            print(
                f"{svc.name:10s} ready on {host}:{svc.port} in {time.monotonic() - t0:.2f} s "
                f"({shlex.join(svc.argv[:4])}{' ...' if len(svc.argv) > 4 else ''})"
            )
        if targets:
            # The processes whose CPU per request item 3 reports beside its throughput.
            cpu_pids = {s.name: s.proc.pid for s in services
                        if s.name in CPU_TARGETS and s.proc is not None}
            results = measure(args, targets, ports, routers, cpu_pids)
        if "sweep" in scenarios:
            bench = Bench(args, {t: ports[t] for t in CORE_TARGETS})
            sweep_res, lines = scenarios_mod.sweep(
                env_for(args, workdir, router_env), bench.sweep_load
            )
            results["sweep"] = sweep_res
            extra_lines += ["## sweep", "", *lines, ""]
    finally:
        for svc in reversed(services):
            svc.stop()
    env = env_for(args, workdir, router_env)
    for name, fn in scenarios_mod.EXTRA.items():
        if name in scenarios:
            res, lines = fn(env)
            results[name] = res
            extra_lines += [f"## {name}", "", *lines, ""]
    results["extra_report"] = "\n".join(extra_lines)
    results.setdefault("errors", {})
    return results


def env_for(
    args: argparse.Namespace, workdir: Path, router_env: dict[str, str]
) -> scenarios_mod.Env:
    """The scenarios' shared settings; routers start from ``--router-cmd`` like the core one."""
    host: str = args.host

    def argv(name: str, config: Path) -> list[str]:
        fields = {
            "python": sys.executable,
            "host": host,
            "port": "0",
            "upstream": "",
            "upstream_url": "",
            "config": str(config),
        }
        return router_argv(args.router_cmd, fields)

    return scenarios_mod.Env(args, host, workdir, argv, router_env)


def round_order(targets: tuple[str, ...], r: int) -> list[str]:
    """Round ``r``'s target order: rotated by ``r``, and within the strategy pair RoundRobin
    goes first in even rounds, LeastLatency in odd ones (whatever the rotation did)."""
    k = r % len(targets)
    order = list(targets[k:] + targets[:k])
    if all(t in order for t in STRATEGY_TARGETS):
        i, j = sorted(order.index(t) for t in STRATEGY_TARGETS)
        first, second = STRATEGY_TARGETS if r % 2 == 0 else reversed(STRATEGY_TARGETS)
        order[i], order[j] = first, second
    return order


def measure(
    args: argparse.Namespace,
    targets: tuple[str, ...],
    ports: dict[str, int],
    routers: dict[str, Service],
    cpu_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    quick: bool = args.quick
    duration: float = args.duration or (2.0 if quick else 5.0)
    rounds: int = args.rounds or (1 if quick else 3)
    conc: int = args.concurrency
    warmup_s = 0.5 if quick else 1.0
    concs = (conc, 1) if conc != 1 else (1,)
    core = "router" in targets
    strategies = all(t in targets for t in STRATEGY_TARGETS)
    bench = Bench(args, {t: ports[t] for t in targets})
    warnings: list[str] = []
    for name in targets:
        warnings += verify_target(name, args.host, ports[name])
    for w in warnings:
        print(f"warning: {w}")

    results: dict[str, Any] = {"scenarios": args.scenarios, "targets": list(targets)}
    if core:
        # Memory: idle right after start, then after N requests (which also warm it up).
        router = routers["router"]
        assert router.proc is not None
        time.sleep(0.2)
        rss_idle = rss_mb(router.proc.pid)
        mem_res = bench.load("router", conc, None, total=args.memory_requests)
        rss_after = rss_mb(router.proc.pid)
        print(f"router RSS idle {rss_idle:.1f} MB; after {mem_res.ok} requests {rss_after:.1f} MB")
        results["memory_phase_errors"] = mem_res.errors

    for name in targets:
        bench.load(name, conc, warmup_s)
        bench.load(name, 1, warmup_s / 2)
    for kind in bench.errors.values():
        kind.clear()  # warm-up errors (e.g. a router still connecting) are not the measurement

    samples: dict[str, dict[int, list[dict[str, Any]]]] = {
        t: {c: [] for c in concs} for t in targets
    }
    for r in range(rounds):
        order = round_order(targets, r)
        for c in concs:
            for name in order:
                pid = cpu_pids.get(name) if cpu_pids and c == conc else None
                cpu = cpu_seconds(pid) if pid is not None else 0.0
                res = bench.load(name, c, duration)
                summary = res.summary()
                if pid is not None and res.ok:
                    summary["cpu_us"] = (cpu_seconds(pid) - cpu) / res.ok * 1e6
                samples[name][c].append(summary)
                print(
                    f"round {r + 1}/{rounds} c={c:<4d} {name:10s} {res.rps:9.0f} req/s  "
                    f"p50 {res.percentile_ms(50):7.3f} ms  p99 {res.percentile_ms(99):7.3f} ms"
                    f"  errors {res.error_count}"
                )

    def per_round(target: str, c: int, key: str) -> list[float]:
        return [float(s[key]) for s in samples[target][c]]

    def diff(target: str, base: str, key: str) -> float:
        """Median over rounds of (target - base) at concurrency 1, for a latency ``key``."""
        return paired_diff(per_round(target, 1, key), per_round(base, 1, key))

    def rps_ratio(a: str, b: str) -> float:
        return paired_ratio(per_round(a, conc, "rps"), per_round(b, conc, "rps"))

    results["table"] = {
        t: {
            str(c): {
                "rps": median(per_round(t, c, "rps")),
                "p50_ms": median(per_round(t, c, "p50_ms")),
                "p90_ms": median(per_round(t, c, "p90_ms")),
                "p99_ms": median(per_round(t, c, "p99_ms")),
                "errors": sum(int(s["errors"]) for s in samples[t][c]),
            }
            for c in concs
        }
        for t in targets
    }
    if core:
        router = routers["router"]
        assert router.proc is not None
        results |= {
            "ratio_router_floor": rps_ratio("router", "floor"),
            "ratio_floor_direct": rps_ratio("floor", "direct"),
            "cpu_us_per_request": cpu_per_request(samples, conc),
            "loadgen_headroom": rps_ratio("direct", "router"),
            "added_latency_ms": {
                t: {"p50": diff(t, "direct", "p50_ms"), "p99": diff(t, "direct", "p99_ms")}
                for t in ("router", "floor")
            },
            "rss_mb": {
                "idle": round(rss_idle, 1),
                "after_requests": round(rss_after, 1),
                "requests": mem_res.ok,
                "after_bench": round(rss_mb(router.proc.pid), 1),
            },
        }
    if strategies:
        rr, ll = STRATEGY_TARGETS
        results["strategies"] = {
            "backends": STRATEGY_BACKENDS,
            "upstreams": args.strategy_upstreams,
            "routing": dict(STRATEGY_ROUTING),
            "throughput_ratio_ll_rr": rps_ratio(ll, rr),
            "c1_diff_ms": (
                {"p50": diff(ll, rr, "p50_ms"), "p99": diff(ll, rr, "p99_ms")}
                if 1 in concs
                else None
            ),
            # Against the one-backend router of the core scenario: what five backends cost.
            "ratio_vs_router": (
                {t: rps_ratio(t, "router") for t in STRATEGY_TARGETS} if core else None
            ),
        }
    first_router = next(iter(routers.values()))
    results |= {
        "rounds": samples,
        "errors": {t: e for t, e in bench.errors.items() if e},
        "warnings": warnings,
        "settings": {
            "quick": quick,
            "scenarios": args.scenarios,
            "duration_s": duration,
            "rounds": rounds,
            "concurrency": conc,
            "workers": args.workers,
            "host": args.host,
            "strategy_upstreams": args.strategy_upstreams,
            "router_cmd": first_router.argv,
        },
    }
    return results


def report(results: dict[str, Any], conc: int) -> str:
    text = core_report(results, conc) if "table" in results else ""
    extra = results.get("extra_report", "")
    return f"{text}\n\n{extra}".strip() if extra else text


def cpu_per_request(
    samples: dict[str, dict[int, list[dict[str, Any]]]], conc: int
) -> dict[str, Any] | None:
    """CPU microseconds per answer of the router and the floor at ``conc`` (medians over
    the rounds) and the router's per-round ratio to the floor, median; None unless both
    have the figure in every round (a round with no answer has none)."""
    rounds = {t: [s["cpu_us"] for s in samples.get(t, {}).get(conc, []) if "cpu_us" in s]
              for t in CPU_TARGETS}
    router, floor = rounds["router"], rounds["floor"]
    if not router or len(router) != len(floor):
        return None
    return {"router": median(router), "floor": median(floor),
            "ratio": paired_ratio(router, floor)}


def cpu_lines(cpu: dict[str, Any] | None, conc: int) -> list[str]:
    if cpu is None:
        return []
    return [
        f"issue 15: CPU per request at c={conc}: router {cpu['router']:.0f} us, floor "
        f"{cpu['floor']:.0f} us: {cpu['ratio']:.2f}x (reference; with both proxies on one full "
        f"core, the throughput target {ISSUE15_RATIO_TARGET:.2f} is "
        f"{1 / ISSUE15_RATIO_TARGET:.2f}x)"
    ]


def core_report(results: dict[str, Any], conc: int) -> str:
    t = results["table"]
    targets: list[str] = results["targets"]
    concs = (conc, 1) if conc != 1 else (1,)
    lines = [
        "| target | concurrency | req/s | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concs:
        for name in targets:
            row = t[name][str(c)]
            lines.append(
                f"| {name} | {c} | {row['rps']:,.0f} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} "
                f"| {row['p99_ms']:.3f} | {row['errors']} |"
            )
    lines.append("")
    if "ratio_router_floor" in results:
        ratio = results["ratio_router_floor"]
        add_r = results["added_latency_ms"]["router"]
        add_f = results["added_latency_ms"]["floor"]
        rss = results["rss_mb"]
        head = results["loadgen_headroom"]
        p50_ok = verdict(add_r["p50"] < ADDED_P50_TARGET_MS)
        lines += [
            f"ratio router/floor: {ratio:.2f} (target >= {RATIO_TARGET:.2f}) "
            f"{verdict(ratio >= RATIO_TARGET)}",
            f"added latency c=1 router vs direct: p50 {add_r['p50']:.3f} ms, "
            f"p99 {add_r['p99']:.3f} ms (target p99 < {ADDED_P99_TARGET_MS} ms) "
            f"{verdict(add_r['p99'] < ADDED_P99_TARGET_MS)}"
            f"; p50 target < {ADDED_P50_TARGET_MS} ms {p50_ok}",
            f"added latency c=1 floor vs direct: p50 {add_f['p50']:.3f} ms, "
            f"p99 {add_f['p99']:.3f} ms (reference)",
            f"router RSS idle: {rss['idle']:.0f} MB, after {rss['requests']} requests: "
            f"{rss['after_requests']:.0f} MB, after the bench: {rss['after_bench']:.0f} MB "
            f"(idle target < {IDLE_RSS_TARGET_MB:.0f} MB) "
            f"{verdict(rss['idle'] < IDLE_RSS_TARGET_MB)}",
            f"loadgen headroom: direct {t['direct'][str(conc)]['rps']:,.0f} req/s = {head:.1f}x "
            f"the router (goal >= {HEADROOM_TARGET:.0f}x) {verdict(head >= HEADROOM_TARGET)}",
            f"floor/direct throughput: {results['ratio_floor_direct']:.2f}",
            f"issue 15: router/floor at c={conc}: {ratio:.2f} (target >= "
            f"{ISSUE15_RATIO_TARGET:.2f}) {verdict(ratio >= ISSUE15_RATIO_TARGET)}",
            *cpu_lines(results.get("cpu_us_per_request"), conc),
            f"issue 15: added p99 at c=1, router {add_r['p99']:.3f} ms vs floor "
            f"{add_f['p99']:.3f} ms (target router <= floor) "
            f"{verdict(add_r['p99'] <= add_f['p99'])}",
        ]
    strat = results.get("strategies")
    if strat:
        n = strat["backends"]
        s_ratio = strat["throughput_ratio_ll_rr"]
        lines.append(
            f"strategy overhead LeastLatency({n}) vs RoundRobin({n}): throughput ratio "
            f"{s_ratio:.2f} (target >= {STRATEGY_RATIO_TARGET:.2f}) "
            f"{verdict(s_ratio >= STRATEGY_RATIO_TARGET)}"
        )
        d = strat["c1_diff_ms"]
        if d is not None:
            lines.append(
                f"strategy c=1 LeastLatency({n}) minus RoundRobin({n}): "
                f"p50 {d['p50']:+.3f} ms, p99 {d['p99']:+.3f} ms (reference)"
            )
        vs = strat["ratio_vs_router"]
        if vs is not None:
            rr, ll = STRATEGY_TARGETS
            lines.append(
                f"{n} backends vs 1 (throughput vs router): RoundRobin {vs[rr]:.2f}, "
                f"LeastLatency {vs[ll]:.2f} (reference)"
            )
    return "\n".join(lines)


def parse_scenarios(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(SCENARIOS)}; got {text!r}"
        )
    return [s for s in SCENARIOS if s in names]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the router against the bare floor proxy and the upstream.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI mode: ~2 s runs, one round")
    parser.add_argument("--duration", type=float, help="seconds per measurement (5; quick 2)")
    parser.add_argument("--rounds", type=int, help="rounds, median taken (3; quick 1)")
    parser.add_argument("--concurrency", type=int, default=64, help="throughput concurrency")
    parser.add_argument("--workers", type=int, default=1, help="load-generator processes")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--host", default="127.0.0.1", choices=("127.0.0.1", "::1"))
    parser.add_argument("--router-cmd", default=DEFAULT_ROUTER_CMD, help="command template")
    parser.add_argument(
        "--scenarios",
        type=parse_scenarios,
        default=list(DEFAULT_SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all but external)",
    )
    parser.add_argument(
        "--external", action="store_true", help="also run wrk/hey (scenario external) if present"
    )
    parser.add_argument("--soak-seconds", type=float, help="soak duration (60; quick 5)")
    parser.add_argument(
        "--sweep-duration", type=float, help="seconds per sweep point (3; quick 0.8)"
    )
    parser.add_argument(
        "--stream-counts",
        type=lambda text: tuple(int(v) for v in text.split(",")),
        help="concurrent streams, comma-separated (64,512,2000; quick 64,512)",
    )
    parser.add_argument("--stream-frames", type=int, help="frames per stream (64; quick 16)")
    parser.add_argument(
        "--concurrency-levels",
        type=lambda text: tuple(int(v) for v in text.split(",")),
        help="concurrency scenario: client counts (100,1000,<fd limit>; quick 50,200)",
    )
    parser.add_argument(
        "--concurrency-duration",
        type=float,
        help="concurrency scenario: seconds per point (20, twice that at the top level; quick 1.5)",
    )
    parser.add_argument("--translation-streams", type=int, help="streams per run (64; quick 32)")
    parser.add_argument(
        "--idle-connections",
        type=int,
        help=f"idle keep-alive connections ({scenarios_mod.IDLE_CONNECTIONS})",
    )
    parser.add_argument(
        "--plots", type=Path, default=ROOT / "bench-results", help="directory for PNG plots"
    )
    parser.add_argument(
        "--strategy-upstreams",
        type=int,
        choices=range(1, STRATEGY_BACKENDS + 1),
        default=1,
        metavar=f"1..{STRATEGY_BACKENDS}",
        help="upstream processes the strategy routers' five backends are spread over (1)",
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench-results" / "latest.json", help="results file"
    )
    args = parser.parse_args(argv)
    if args.external and "external" not in args.scenarios:
        args.scenarios = [*args.scenarios, "external"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    nofile = sse_client.raise_nofile_limit()  # before any child starts: they inherit it
    if nofile < scenarios_mod.IDLE_CONNECTIONS + 1000:
        print(f"warning: RLIMIT_NOFILE is {nofile}: the idle and streaming scenarios may fail")
    busy = cpu_busy()
    if busy is not None and busy > BUSY_WARN:
        print(
            f"warning: the CPUs were {busy:.0%} busy before the bench started: other processes "
            "compete with it and the figures will be noisy"
        )
    with terminate_on_sigterm(), tempfile.TemporaryDirectory(prefix="continuum-bench-") as tmp:
        try:
            results = run_bench(args, Path(tmp))
        except BenchError as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; all bench processes stopped", file=sys.stderr)
            return 130
    text = report(results, args.concurrency)
    print()
    print(text)
    results["report"] = text
    results["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    results["machine"]["cpu_busy_before"] = None if busy is None else round(busy, 3)
    results["plots"] = plots.write_all(results, args.plots)
    results["wall_s"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    print(f"results written to {args.json} ({results['wall_s']} s)")
    errors = results["errors"] or results.get("memory_phase_errors")
    extra_errors = {
        name: results[name]["errors"]
        for name in (*scenarios_mod.EXTRA, "sweep")
        if isinstance(results.get(name), dict) and results[name].get("errors")
    }
    if extra_errors and not errors:
        errors = extra_errors
    if errors:
        print(f"bench FAILED: request errors {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
