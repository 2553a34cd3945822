"""Count what one request costs, per request: scheduler steps, garbage collections, CPU, and
(optionally) Python bytecodes per function and function calls.

Timings on a shared machine are noise; counts are not. This tool runs the floor and one or
more routers on loopback against the bench upstream, warms each up, then counts a window of
``N`` requests at concurrency ``C`` and prints every figure divided by ``N``: two source trees
(or two configs of one tree) compare line by line, and a change that removes work shows as
fewer bytecodes in the function it touched.

Two roles, one module:

``wrap``
    ``count.py wrap PROGRAM [ARGS...]`` runs a trio program (a ``.py`` file or a module name)
    with counters that stay off until ``SIGUSR1`` and are written as JSON to ``$COUNT_OUT``
    at ``SIGUSR2``: a trio ``Instrument`` (task steps per task name, wake-ups, I/O waits),
    ``gc`` callbacks (collections and their milliseconds per generation) and the allocated
    blocks' growth. ``COUNT_OPS=1`` adds bytecodes per function (``sys.settrace`` with opcode
    events: slow, but exact), ``COUNT_PROFILE=1`` a ``cProfile`` of the window (calls).

``run`` (the A/B driver)
    ``count.py run [floor] LABEL=TREE[@EXTRA.yaml] ...`` starts the upstream, then each
    target through ``wrap``: ``floor`` is ``floor_proxy.py``; a label names a source tree
    whose router runs ``ROUTER_CONFIG`` with the YAML file's top-level blocks inserted (so one
    tree can run under several configs: ``off=.`` ``on=.@features.yaml``). Targets are
    counted one after the other, each alone on the machine's loopback.

Only loopback addresses are used, every child is stopped at the end, and a window that makes
no progress for ``--timeout`` seconds ends the run.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import io
import json
import os
import pstats
import runpy
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import loadgen
from procs import ROOT, Service, cpu_seconds, free_port
from scenarios import ROUTER_CONFIG

HOST: Final = "127.0.0.1"
CHAT_PATH: Final = "/v1/chat/completions"
#: Functions listed per target (bytecodes per request, most first).
TOP: Final = 25

# --- wrap: the counters inside the measured process -----------------------------------------

Tracer = Callable[[FrameType, str, Any], Any]


class _Counters:
    """The counters of one wrapped process; all off until :meth:`start`."""

    def __init__(self, out: str, ops: bool, profile: bool) -> None:
        self.out = out
        self.on = False
        self.counts: collections.Counter[str] = collections.Counter()
        self.gc_ms: dict[str, float] = {}
        self.ops: collections.Counter[str] = collections.Counter()
        self.count_ops = ops
        self.profile = cProfile.Profile() if profile else None
        self.blocks = 0
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self.counts[f"gc{info['generation']}"] += 1
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            key = f"gc{info['generation']}_ms"
            self.gc_ms[key] = (self.gc_ms.get(key, 0.0)
                               + (time.perf_counter() - self._gc_started) * 1000)

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Tracer:
        # Per frame: opcode events on, line events off; each opcode counts for its function.
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        code = frame.f_code
        key = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_qualname}"
        ops = self.ops

        def local(frame: FrameType, event: str, arg: Any) -> Tracer:
            if event == "opcode":
                ops[key] += 1
            return local

        return local

    def start(self, *_: object) -> None:
        self.counts.clear()
        self.gc_ms.clear()
        self.ops.clear()
        self.blocks = sys.getallocatedblocks()
        self.on = True
        if self.count_ops:
            threading.settrace(self._trace)
            sys.settrace(self._trace)
        if self.profile is not None:
            self.profile.enable()

    def stop(self, *_: object) -> None:
        if self.count_ops:
            sys.settrace(None)
            threading.settrace(None)
        if self.profile is not None:
            self.profile.disable()
        self.on = False
        out: dict[str, Any] = {
            **self.counts, **self.gc_ms,
            "blocks_delta": sys.getallocatedblocks() - self.blocks,
        }
        if self.count_ops:
            out["ops"] = dict(self.ops.most_common(200))
            out["ops_total"] = sum(self.ops.values())
        if self.profile is not None:
            stats = pstats.Stats(self.profile, stream=io.StringIO())
            raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
            calls = collections.Counter({
                f"{Path(file).name}:{name}": entry[1]
                for (file, _, name), entry in raw.items()})
            out["calls"] = dict(calls.most_common(200))
            out["calls_total"] = sum(calls.values())
            self.profile = cProfile.Profile()  # the next window starts afresh
        Path(self.out).write_text(json.dumps(out))


def _instrument(counters: _Counters) -> Any:
    """A trio Instrument feeding ``counters`` (trio is imported here: the driver needs none)."""
    import trio

    class Counting(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if counters.on:
                counters.counts["step"] += 1
                counters.counts["task:" + task.name.rsplit(".", 1)[-1][:40]] += 1

        def task_scheduled(self, task: trio.lowlevel.Task) -> None:
            if counters.on:
                counters.counts["scheduled"] += 1

        def before_io_wait(self, timeout: float) -> None:
            if counters.on:
                counters.counts["io_wait"] += 1

    return Counting()


def wrap(argv: Sequence[str]) -> None:
    """Run ``argv`` (a ``.py`` path or a module name, then its arguments) with the counters
    installed: every ``trio.run`` of it gets the instrument."""
    import trio

    counters = _Counters(os.environ["COUNT_OUT"], bool(os.environ.get("COUNT_OPS")),
                         bool(os.environ.get("COUNT_PROFILE")))
    gc.callbacks.append(counters.on_gc)
    signal.signal(signal.SIGUSR1, counters.start)
    signal.signal(signal.SIGUSR2, counters.stop)
    real_run = trio.run

    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), _instrument(counters)]
        return real_run(*args, **kwargs)

    trio.run = run  # type: ignore[assignment]
    target, sys.argv = argv[0], list(argv)
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)


# --- run: the driver ---------------------------------------------------------------------------


@dataclass
class Target:
    """One counted process: the floor, or a router of ``tree`` with ``extra`` config."""

    label: str
    tree: Path | None = None
    extra: str = ""

    @classmethod
    def parse(cls, spec: str) -> Target:
        if spec == "floor":
            return cls("floor")
        label, sep, rest = spec.partition("=")
        if not sep or not label:
            raise SystemExit(f"count: {spec!r} is not floor or LABEL=TREE[@EXTRA.yaml]")
        tree, _, extra = rest.partition("@")
        return cls(label, Path(tree).resolve(), Path(extra).read_text() if extra else "")


def _service(target: Target, up_port: int, work: Path, env: dict[str, str]) -> Service:
    port = free_port(HOST)
    wrapper = [sys.executable, str(Path(__file__).resolve()), "wrap"]
    child_env = dict(env, COUNT_OUT=str(work / f"{target.label}.json"))
    if target.tree is None:
        argv = [*wrapper, str(ROOT / "benches" / "floor_proxy.py"), "--host", HOST,
                "--port", str(port), "--upstream", f"{HOST}:{up_port}"]
        return Service(target.label, argv, HOST, port, work / "floor.log", child_env)
    extra = target.extra if not target.extra or target.extra.endswith("\n") else (
        target.extra + "\n")
    config = work / f"{target.label}.yaml"
    config.write_text(ROUTER_CONFIG.format(bind=f"{HOST}:{port}", extra=extra,
                                           upstream_url=f"http://{HOST}:{up_port}"))
    child_env["PYTHONPATH"] = str(target.tree / "src")
    return Service(target.label, [*wrapper, "continuum", "run", str(config)], HOST, port,
                   work / f"{target.label}.log", child_env, ready_path="/health")


def _window(svc: Service, request: bytes, n: int, concurrency: int, timeout_s: float,
            out: Path) -> dict[str, Any]:
    """Count ``n`` requests of ``svc`` (warm): the wrapped process's counters, plus its CPU
    and the load's errors, all per request."""
    assert svc.proc is not None
    pid = svc.proc.pid
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    time.sleep(0.2)  # the handler runs between two bytecodes of the main thread
    cpu = cpu_seconds(pid)
    result = loadgen.run_load(HOST, svc.port, request, concurrency, total=n,
                              timeout_s=timeout_s)
    cpu = cpu_seconds(pid) - cpu
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while not out.exists() or not out.stat().st_size:
        if time.monotonic() > deadline:
            raise SystemExit(f"count: {svc.name} wrote no counts within {timeout_s:g} s")
        time.sleep(0.05)
    time.sleep(0.1)  # the file is written in one call; let it finish
    raw: dict[str, Any] = json.loads(out.read_text())
    answered = max(result.ok, 1)
    per: dict[str, Any] = {
        k: v / answered for k, v in raw.items() if isinstance(v, (int, float))}
    per["cpu_us"] = cpu / answered * 1e6
    per["ok"] = result.ok
    per["errors"] = result.error_count
    for table in ("ops", "calls"):
        if table in raw:
            per[table] = {k: v / answered for k, v in raw[table].items()}
    return per


def _report(results: dict[str, dict[str, Any]]) -> list[str]:
    """The figures side by side: one column per target."""
    labels = list(results)
    lines = ["per request | " + " | ".join(labels)]
    scalar = sorted({k for r in results.values() for k, v in r.items()
                     if not isinstance(v, dict)}, key=lambda k: (k.startswith("task:"), k))
    for key in scalar:
        cells = [results[label].get(key) for label in labels]
        lines.append(f"{key} | " + " | ".join(
            "-" if c is None else f"{c:,.2f}" if isinstance(c, float) else f"{c:,}"
            for c in cells))
    for table in ("ops", "calls"):
        for label in labels:
            rows = results[label].get(table)
            if not rows:
                continue
            lines += ["", f"{label}: {table} per request, top {TOP}"]
            lines += [f"{v:9.1f} {k}" for k, v in list(rows.items())[:TOP]]
    return lines


def run(targets: Sequence[Target], n: int, concurrency: int, warm: int, timeout_s: float,
        headers: Sequence[tuple[str, str]], latency: float) -> dict[str, dict[str, Any]]:
    """Start the upstream and every target, count each in turn, stop them all."""
    work = Path(tempfile.mkdtemp(prefix="continuum-count-"))
    env = dict(os.environ)
    up_port = free_port(HOST)
    upstream = Service("upstream", [sys.executable, str(ROOT / "benches" / "upstream.py"),
                                    "--host", HOST, "--port", str(up_port),
                                    "--latency", str(latency)],
                       HOST, up_port, work / "upstream.log", env)
    services: list[tuple[Target, Service]] = []
    results: dict[str, dict[str, Any]] = {}
    try:
        upstream.start()
        upstream.wait_ready()
        for target in targets:
            svc = _service(target, up_port, work, env)
            services.append((target, svc))
            svc.start()
            svc.wait_ready()
        for target, svc in services:
            request = loadgen.build_request(HOST, svc.port, CHAT_PATH, headers=headers)
            loadgen.run_load(HOST, svc.port, request, concurrency, total=warm,
                             timeout_s=timeout_s)
            results[target.label] = _window(svc, request, n, concurrency, timeout_s,
                                             work / f"{target.label}.json")
    finally:
        for _, svc in services:
            svc.stop()
        upstream.stop()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["wrap"]:
        if len(args) < 2:
            raise SystemExit("usage: count.py wrap PROGRAM [ARGS...]")
        wrap(args[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    driver = sub.add_parser("run", help="count the floor and routers per request")
    driver.add_argument("targets", nargs="+", metavar="floor|LABEL=TREE[@EXTRA.yaml]")
    driver.add_argument("-n", type=int, default=2000, help="requests counted per target")
    driver.add_argument("-c", type=int, default=1, help="concurrency")
    driver.add_argument("--warm", type=int, default=500, help="requests before counting")
    driver.add_argument("--timeout", type=float, default=30.0,
                        help="seconds without progress before the run gives up")
    driver.add_argument("--latency", type=float, default=0.0,
                        help="seconds the upstream holds every answer")
    driver.add_argument("--header", action="append", default=[], metavar="NAME: VALUE",
                        help="a header every request carries (e.g. the key)")
    driver.add_argument("--json", type=Path, help="also write the figures here")
    ns = parser.parse_args(args)
    headers = [(name.strip(), value.strip())
               for name, _, value in (h.partition(":") for h in ns.header)]
    results = run([Target.parse(s) for s in ns.targets], ns.n, ns.c, ns.warm, ns.timeout,
                  headers, ns.latency)
    print("\n".join(_report(results)))
    if ns.json is not None:
        ns.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
