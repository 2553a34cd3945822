"""``just bench``: the router against the floor proxy and the bare upstream, in one run.

Starts, as child processes on free ports of ``--host`` (127.0.0.1 by default):

* ``upstream`` -- ``benches/upstream.py``, a zero-latency OpenAI-shaped server;
* ``floor``    -- ``benches/floor_proxy.py``, the bare trio + httptools proxy (the baseline);
* ``router``   -- ``python -m continuum run CONFIG`` (or ``--router-cmd``), both proxies in front
  of the same upstream.

Then: the router's idle RSS, 10,000 requests, its RSS again; a warm-up of each target; and
``--rounds`` rounds in which every target (``direct`` = the upstream itself, ``floor``,
``router``) gets the same load generator at ``--concurrency`` (throughput) and at concurrency 1
(latency), target order rotating every round so noise hits all alike. Figures are the median
over rounds; ratios are computed inside each round, then the median taken.

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
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

import loadgen

ROOT: Final = Path(__file__).resolve().parent.parent
BENCHES: Final = ROOT / "benches"
CHAT_PATH: Final = "/v1/chat/completions"
READY_PATH: Final = "/v1/models"
READY_TIMEOUT_S: Final = 10.0
DEFAULT_ROUTER_CMD: Final = "{python} -m continuum run {config}"
CORE_TARGETS: Final = ("direct", "floor", "router")
#: The strategy pair: five backends each, RoundRobin vs LeastLatency (issue 3's bench).
STRATEGY_TARGETS: Final = ("router-rr5", "router-ll5")
STRATEGY_ROUTING: Final = {
    "router-rr5": "{strategy: RoundRobin}",
    "router-ll5": "{strategy: LeastLatency, fallback_strategy: RoundRobin}",
}
STRATEGY_BACKENDS: Final = 5
SCENARIOS: Final = {"core": CORE_TARGETS, "strategies": STRATEGY_TARGETS}
ROUTER_HINT: Final = (
    "\n(to exercise the bench without the router, stand a second floor proxy in for it: "
    '--router-cmd "python benches/floor_proxy.py --port {port} --upstream {upstream}")'
)

# Targets (DESIGN.md performance budget).
RATIO_TARGET: Final = 0.6
ADDED_P50_TARGET_MS: Final = 0.3
ADDED_P99_TARGET_MS: Final = 0.5
IDLE_RSS_TARGET_MB: Final = 40.0
HEADROOM_TARGET: Final = 3.0
STRATEGY_RATIO_TARGET: Final = 0.9  # issue 3: LeastLatency(5) within 10% of RoundRobin(5)

CONFIG_TEMPLATE: Final = """\
server:
  bind_address: "{bind}"
  connection_pool_size: 256
health_checks:
  enabled: false
logging:
  level: error
backends:
  - name: upstream
    url: "{upstream_url}"
    models: ["bench-model"]
"""

STRATEGY_CONFIG_HEAD: Final = """\
server:
  bind_address: "{bind}"
  connection_pool_size: 256
health_checks:
  enabled: false
logging:
  level: error
routing: {routing}
backends:
"""
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


class BenchError(Exception):
    """Something failed to start or answered wrongly; the bench cannot be trusted."""


@dataclass
class Service:
    """A child process serving HTTP on ``host:port``."""

    name: str
    argv: list[str]
    host: str
    port: int
    log_path: Path
    env: dict[str, str] | None = None
    hint: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,  # its own process group: we signal it, Ctrl-C doesn't
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after 3 s."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait_s)
                # The leader is gone; make sure no child of it survives either.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``GET /v1/models`` until it answers 200, the process dies, or time is up."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready\n"
                    f"command: {shlex.join(self.argv)}\n--- log tail ---\n{self.log_tail()}"
                    f"{self.hint}"
                )
            try:
                status, _ = http_request(self.host, self.port, "GET", READY_PATH, timeout_s=1.0)
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    return
                last = f"HTTP {status}"
            time.sleep(0.05)
        raise BenchError(
            f"{self.name} did not answer GET {READY_PATH} with 200 within {timeout_s:.0f} s "
            f"(last: {last})\ncommand: {shlex.join(self.argv)}\n--- log tail ---\n"
            f"{self.log_tail()}{self.hint}"
        )


def free_port(host: str) -> int:
    """A port the kernel considers free right now (bind to 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_request(
    host: str, port: int, method: str, path: str, body: bytes | None = None, timeout_s: float = 5.0
) -> tuple[int, bytes]:
    """One stdlib HTTP request on a fresh connection: (status, full body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


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


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` plus all its descendants (a multi-worker router), in MB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total_kb = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, ()))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def router_argv(template: str, fields: dict[str, str]) -> list[str]:
    argv = [part.format(**fields) for part in shlex.split(template)]
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


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


def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    host: str = args.host
    ports = {name: free_port(host) for name in TARGETS}
    up_port, floor_port, router_port = ports["direct"], ports["floor"], ports["router"]
    host_in_url = f"[{host}]" if ":" in host else host
    upstream = f"{host_in_url}:{up_port}"
    config_path = workdir / "router.yaml"
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            bind=f"{host_in_url}:{router_port}", upstream_url=f"http://{upstream}"
        )
    )
    fields = {
        "python": sys.executable,
        "host": host,
        "port": str(router_port),
        "upstream": upstream,
        "upstream_url": f"http://{upstream}",
        "config": str(config_path),
    }
    router_env = dict(os.environ)
    src = str(ROOT / "src")  # run the in-tree router even when it is not installed
    router_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (src, router_env.get("PYTHONPATH", "")) if p
    )
    py = sys.executable
    services = [
        Service(
            "upstream",
            [py, str(BENCHES / "upstream.py"), "--host", host, "--port", str(up_port)],
            host,
            up_port,
            workdir / "upstream.log",
        ),
        Service(
            "floor",
            [
                py,
                str(BENCHES / "floor_proxy.py"),
                "--host",
                host,
                "--port",
                str(floor_port),
                "--upstream",
                upstream,
            ],
            host,
            floor_port,
            workdir / "floor.log",
        ),
        Service(
            "router",
            router_argv(args.router_cmd, fields),
            host,
            router_port,
            workdir / "router.log",
            env=router_env,
            hint=ROUTER_HINT if args.router_cmd == DEFAULT_ROUTER_CMD else "",
        ),
    ]
    try:
        for svc in services:
            svc.start()
            t0 = time.monotonic()
            svc.wait_ready()
            print(
                f"{svc.name:9s} ready on {host}:{svc.port} in {time.monotonic() - t0:.2f} s "
                f"({shlex.join(svc.argv[:4])}{' ...' if len(svc.argv) > 4 else ''})"
            )
        return measure(args, ports, services[2])
    finally:
        for svc in reversed(services):
            svc.stop()


def measure(args: argparse.Namespace, ports: dict[str, int], router: Service) -> dict[str, Any]:
    quick: bool = args.quick
    duration: float = args.duration or (2.0 if quick else 5.0)
    rounds: int = args.rounds or (1 if quick else 3)
    conc: int = args.concurrency
    warmup_s = 0.5 if quick else 1.0
    concs = (conc, 1) if conc != 1 else (1,)
    bench = Bench(args, ports)
    warnings: list[str] = []
    for name in TARGETS:
        warnings += verify_target(name, args.host, ports[name])
    for w in warnings:
        print(f"warning: {w}")

    # Memory: idle right after start, then after N requests (which also warm the router up).
    assert router.proc is not None
    time.sleep(0.2)
    rss_idle = rss_mb(router.proc.pid)
    mem_res = bench.load("router", conc, None, total=args.memory_requests)
    rss_after = rss_mb(router.proc.pid)
    print(f"router RSS idle {rss_idle:.1f} MB; after {mem_res.ok} requests {rss_after:.1f} MB")

    for name in TARGETS:
        bench.load(name, conc, warmup_s)
        bench.load(name, 1, warmup_s / 2)
    for kind in bench.errors.values():
        kind.clear()  # warm-up errors (e.g. a router still connecting) are not the measurement

    samples: dict[str, dict[int, list[dict[str, Any]]]] = {
        t: {c: [] for c in concs} for t in TARGETS
    }
    for r in range(rounds):
        order = TARGETS[r % 3 :] + TARGETS[: r % 3]
        for c in concs:
            for name in order:
                res = bench.load(name, c, duration)
                samples[name][c].append(res.summary())
                print(
                    f"round {r + 1}/{rounds} c={c:<4d} {name:7s} {res.rps:9.0f} req/s  "
                    f"p50 {res.percentile_ms(50):7.3f} ms  p99 {res.percentile_ms(99):7.3f} ms"
                    f"  errors {res.error_count}"
                )

    def per_round(target: str, c: int, key: str) -> list[float]:
        return [float(s[key]) for s in samples[target][c]]

    def ratio(a: list[float], b: list[float]) -> float:
        return median([x / y if y else float("nan") for x, y in zip(a, b, strict=True)])

    def added(target: str, key: str) -> float:
        diffs = zip(per_round(target, 1, key), per_round("direct", 1, key), strict=True)
        return median([x - y for x, y in diffs])

    table = {
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
        for t in TARGETS
    }
    router_rps = per_round("router", conc, "rps")
    floor_rps = per_round("floor", conc, "rps")
    return {
        "table": table,
        "ratio_router_floor": ratio(router_rps, floor_rps),
        "ratio_floor_direct": ratio(floor_rps, per_round("direct", conc, "rps")),
        "loadgen_headroom": ratio(per_round("direct", conc, "rps"), router_rps),
        "added_latency_ms": {
            t: {"p50": added(t, "p50_ms"), "p99": added(t, "p99_ms")} for t in ("router", "floor")
        },
        "rss_mb": {
            "idle": round(rss_idle, 1),
            "after_requests": round(rss_after, 1),
            "requests": mem_res.ok,
            "after_bench": round(rss_mb(router.proc.pid), 1),
        },
        "rounds": samples,
        "errors": {t: e for t, e in bench.errors.items() if e},
        "memory_phase_errors": mem_res.errors,
        "warnings": warnings,
        "settings": {
            "quick": quick,
            "duration_s": duration,
            "rounds": rounds,
            "concurrency": conc,
            "workers": args.workers,
            "host": args.host,
            "router_cmd": router.argv,
        },
    }


def report(results: dict[str, Any], conc: int) -> str:
    t = results["table"]
    concs = (conc, 1) if conc != 1 else (1,)
    lines = [
        "| target | concurrency | req/s | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concs:
        for name in TARGETS:
            row = t[name][str(c)]
            lines.append(
                f"| {name} | {c} | {row['rps']:,.0f} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} "
                f"| {row['p99_ms']:.3f} | {row['errors']} |"
            )
    ratio = results["ratio_router_floor"]
    add_r = results["added_latency_ms"]["router"]
    add_f = results["added_latency_ms"]["floor"]
    rss = results["rss_mb"]
    head = results["loadgen_headroom"]
    lines += [
        "",
        f"ratio router/floor: {ratio:.2f} (target >= {RATIO_TARGET:.2f}) "
        f"{verdict(ratio >= RATIO_TARGET)}",
        f"added latency c=1 router vs direct: p50 {add_r['p50']:.3f} ms, p99 {add_r['p99']:.3f} ms"
        f" (target p99 < {ADDED_P99_TARGET_MS} ms) {verdict(add_r['p99'] < ADDED_P99_TARGET_MS)}"
        f"; p50 target < {ADDED_P50_TARGET_MS} ms {verdict(add_r['p50'] < ADDED_P50_TARGET_MS)}",
        f"added latency c=1 floor vs direct: p50 {add_f['p50']:.3f} ms, p99 {add_f['p99']:.3f} ms"
        " (reference)",
        f"router RSS idle: {rss['idle']:.0f} MB, after {rss['requests']} requests: "
        f"{rss['after_requests']:.0f} MB, after the bench: {rss['after_bench']:.0f} MB "
        f"(idle target < {IDLE_RSS_TARGET_MB:.0f} MB) {verdict(rss['idle'] < IDLE_RSS_TARGET_MB)}",
        f"loadgen headroom: direct {t['direct'][str(conc)]['rps']:,.0f} req/s = {head:.1f}x the "
        f"router (goal >= {HEADROOM_TARGET:.0f}x) {verdict(head >= HEADROOM_TARGET)}",
        f"floor/direct throughput: {results['ratio_floor_direct']:.2f}",
    ]
    return "\n".join(lines)


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
        "--json", type=Path, default=ROOT / "bench-results" / "latest.json", help="results file"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
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
    results["wall_s"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    print(f"results written to {args.json} ({results['wall_s']} s)")
    errors = results["errors"] or results["memory_phase_errors"]
    if errors:
        print(f"bench FAILED: request errors {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
