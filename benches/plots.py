"""PNG plots of a bench run, when matplotlib is installed (optional: skipped with a note).

``write_all(results, directory)`` draws what the results hold -- the sweep (req/s and p99 vs
concurrency), the concurrency scenario (req/s, p50/p99 and CPU per request vs concurrent slow
requests), the streaming gaps and TTFB (router vs direct per stream count), the soak RSS
over time -- and returns the files written, or a note saying why none were.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


def write_all(results: dict[str, Any], directory: Path) -> list[str]:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        note = "plots skipped: matplotlib is not installed (pip install matplotlib)"
        print(note)
        return [note]
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    directory.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = directory / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    sweep = results.get("sweep")
    if sweep:
        concs = [int(c) for c in sweep["table"]]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for target in ("direct", "floor", "router"):
            ax1.plot(
                concs, [sweep["table"][str(c)][target]["rps"] for c in concs], "o-", label=target
            )
            ax2.plot(
                concs, [sweep["table"][str(c)][target]["p99_ms"] for c in concs], "o-", label=target
            )
        for ax, title in ((ax1, "throughput (req/s)"), (ax2, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_title(title)
            ax.legend()
        save(fig, "sweep.png")

    streaming = results.get("streaming")
    if streaming:
        counts = list(streaming["runs"])
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for target in ("direct", "router"):
            runs = [streaming["runs"][n][target] for n in counts]
            ax1.plot(counts, [r["ttfb_p99_ms"] for r in runs], "o-", label=f"{target} p99")
            ax1.plot(counts, [r["ttfb_p50_ms"] for r in runs], "x--", label=f"{target} p50")
            ax2.plot(counts, [r["gap_p99_ms"] for r in runs], "o-", label=f"{target} p99")
            ax2.plot(counts, [r["gap_p50_ms"] for r in runs], "x--", label=f"{target} p50")
        ax1.set_title("TTFB (ms)")
        ax2.set_title("per-frame gap minus pacing (ms)")
        for ax in (ax1, ax2):
            ax.set_xlabel("concurrent streams")
            ax.legend()
        save(fig, "streaming.png")

    conc = results.get("concurrency")
    if conc:
        levels = [int(c) for c in conc["table"]]
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
        for target in ("direct", "floor", "router"):
            rows = [conc["table"][str(c)][target] for c in levels]
            ax1.plot(levels, [r["rps"] for r in rows], "o-", label=target)
            ax2.plot(levels, [r["p50_ms"] for r in rows], "x--", label=f"{target} p50")
            ax2.plot(levels, [r["p99_ms"] for r in rows], "o-", label=f"{target} p99")
            if target != "direct":
                ax3.plot(levels, [r["cpu_us_per_req"] for r in rows], "o-", label=target)
        titles = ("throughput (req/s)", "latency (ms), 500 ms upstream", "CPU per request (us)")
        for ax, title in zip((ax1, ax2, ax3), titles, strict=True):
            ax.set_xscale("log")
            ax.set_xlabel("concurrent requests")
            ax.set_title(title)
            ax.legend()
        save(fig, "concurrency.png")

    soak = results.get("soak")
    if soak:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, samples in soak["samples"].items():
            ax.plot([t for t, _ in samples], [m for _, m in samples], label=name)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MB)")
        ax.set_title("soak: RSS")
        ax.legend()
        save(fig, "soak.png")
    if written:
        print(f"plots written: {', '.join(written)}")
    return written
