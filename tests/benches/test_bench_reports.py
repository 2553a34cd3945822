"""The bench tools' pure parts: PASS/MISS verdicts, paired ratios and differences, the
markdown report and its verdict lines, scenario parsing, round order, the figures the
scenarios derive (memory slope, worker counts), the external tools' command lines."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import pytest

import run
import scenarios

NAN = float("nan")


def test_verdicts() -> None:
    for verdict in (run.verdict, scenarios.verdict):
        assert verdict(True) == "PASS" and verdict(False) == "MISS"


def test_median_skips_rounds_without_a_sample() -> None:
    assert run.median([3.0, NAN, 1.0, 2.0]) == 2.0
    assert math.isnan(run.median([NAN, NAN])) and math.isnan(run.median([]))
    assert scenarios.median([NAN, 4.0]) == 4.0


def test_ratios_and_differences_are_per_round_then_median() -> None:
    # Each round's pair is compared, then the median taken: not the ratio of medians.
    router, floor = [50.0, 90.0, 40.0], [100.0, 100.0, 50.0]
    assert run.paired_ratio(router, floor) == pytest.approx(0.8)  # 0.5, 0.9, 0.8
    assert run.paired_ratio([1.0, 2.0], [0.0, 4.0]) == 0.5  # a zero base: no sample
    assert math.isnan(run.paired_ratio([1.0], [0.0]))
    assert run.paired_diff([1.5, 2.0, 9.0], [1.0, 1.0, 1.0]) == 1.0
    with pytest.raises(ValueError):
        run.paired_ratio([1.0], [1.0, 2.0])  # rounds must pair up
    samples = {"a": {"rps": [10.0, 30.0], "p50": [2.0, 3.0]},
               "b": {"rps": [20.0, 20.0], "p50": [1.0, 1.0]}}
    assert scenarios._paired_ratio(samples, "a", "b") == pytest.approx(1.0)  # 0.5, 1.5
    assert scenarios._paired_diff(samples, "a", "b") == pytest.approx(1.5)


def test_json_safe_turns_nan_into_null() -> None:
    data = {"a": NAN, "b": [1.0, NAN, {"c": (NAN, 2)}], "d": "x"}
    assert json.dumps(run.json_safe(data), allow_nan=False) == (
        '{"a": null, "b": [1.0, null, {"c": [null, 2]}], "d": "x"}')


def test_round_order_rotates_and_alternates_the_strategy_pair() -> None:
    targets = ("direct", "floor", "router")
    assert [run.round_order(targets, r) for r in range(4)] == [
        ["direct", "floor", "router"], ["floor", "router", "direct"],
        ["router", "direct", "floor"], ["direct", "floor", "router"]]
    rr, ll = run.STRATEGY_TARGETS
    both = ("router", rr, ll)
    firsts = []
    for r in range(6):
        order = run.round_order(both, r)
        assert sorted(order) == sorted(both)
        firsts.append(min((order.index(rr), rr), (order.index(ll), ll))[1])
    assert firsts == [rr, ll] * 3


def test_parse_scenarios() -> None:
    assert run.parse_scenarios("core, streaming ,") == ["core", "streaming"]
    for bad in ("", " , ", "core,nope"):
        with pytest.raises(argparse.ArgumentTypeError):
            run.parse_scenarios(bad)


def core_results(ratio: float, router_p99: float, floor_p99: float) -> dict[str, Any]:
    row = {"rps": 12345.6, "p50_ms": 0.25, "p90_ms": 0.5, "p99_ms": 1.0, "errors": 0}
    return {
        "targets": ["direct", "floor", "router"],
        "table": {t: {"64": dict(row), "1": {**row, "errors": 2}}
                  for t in ("direct", "floor", "router")},
        "ratio_router_floor": ratio,
        "ratio_floor_direct": 0.7,
        "loadgen_headroom": 3.5,
        "added_latency_ms": {"router": {"p50": 0.2, "p99": router_p99},
                             "floor": {"p50": 0.1, "p99": floor_p99}},
        "rss_mb": {"idle": 30.0, "requests": 1000, "after_requests": 33.0,
                   "after_bench": 35.0},
    }


def verdict_of(report: str, start: str) -> str:
    (line,) = [x for x in report.splitlines() if x.startswith(start)]
    return line.rsplit(" ", 1)[-1]


def test_core_report_table_and_verdicts() -> None:
    text = run.core_report(core_results(0.85, 0.3, 0.4), 64)
    lines = text.splitlines()
    assert lines[0] == "| target | concurrency | req/s | p50 ms | p90 ms | p99 ms | errors |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| direct | 64 | 12,346 | 0.250 | 0.500 | 1.000 | 0 |"
    assert lines[5] == "| direct | 1 | 12,346 | 0.250 | 0.500 | 1.000 | 2 |"
    assert verdict_of(text, "ratio router/floor: 0.85") == "PASS"
    assert verdict_of(text, "issue 15: router/floor at c=64: 0.85") == "PASS"
    assert verdict_of(text, "issue 15: added p99 at c=1") == "PASS"
    assert "added latency c=1 router vs direct: p50 0.200 ms, p99 0.300 ms" in text
    assert verdict_of(text, "router RSS idle: 30 MB") == "PASS"
    assert verdict_of(text, "loadgen headroom: direct 12,346 req/s = 3.5x") == "PASS"

    missed = run.core_report(core_results(0.55, 0.52, 0.38), 64)
    assert verdict_of(missed, "ratio router/floor: 0.55") == "MISS"
    assert verdict_of(missed, "issue 15: router/floor at c=64: 0.55") == "MISS"
    assert verdict_of(missed, "issue 15: added p99 at c=1, router 0.520 ms vs floor") == "MISS"
    # A ratio between the two targets passes one and misses the other.
    between = run.core_report(core_results(0.7, 0.3, 0.4), 64)
    assert verdict_of(between, "ratio router/floor") == "PASS"
    assert verdict_of(between, "issue 15: router/floor") == "MISS"


def test_cpu_per_request_is_per_round_then_median_and_reported() -> None:
    def rounds(*cpu: float) -> list[dict[str, Any]]:
        return [{"rps": 1.0, "cpu_us": c} for c in cpu]

    samples = {"router": {64: rounds(60.0, 66.0, 62.0), 1: rounds(1.0)},
               "floor": {64: rounds(50.0, 44.0, 50.0)}, "direct": {64: [{"rps": 1.0}]}}
    cpu = run.cpu_per_request(samples, 64)
    assert cpu is not None
    assert (cpu["router"], cpu["floor"]) == (62.0, 50.0)
    assert cpu["ratio"] == pytest.approx(1.24)  # the rounds' 1.2, 1.5, 1.24: their median
    results = core_results(0.75, 0.3, 0.4) | {"cpu_us_per_request": cpu}
    (line,) = [x for x in run.core_report(results, 64).splitlines()
               if x.startswith("issue 15: CPU per request at c=64")]
    assert line.startswith("issue 15: CPU per request at c=64: router 62 us, floor 50 us: 1.24x")
    assert "the throughput target 0.80 is 1.25x" in line
    # Not measured (a round without the figure, or no floor): no figure and no line.
    samples["floor"][64] = [{"rps": 1.0}, *rounds(44.0, 50.0)]
    assert run.cpu_per_request(samples, 64) is None
    assert run.cpu_per_request({"router": {64: rounds(60.0)}}, 64) is None
    assert "CPU per request" not in run.core_report(core_results(0.75, 0.3, 0.4), 64)


def test_core_report_at_concurrency_one_has_one_block() -> None:
    results = core_results(0.9, 0.1, 0.2)
    results["table"] = {t: {"1": rows["1"]} for t, rows in results["table"].items()}
    text = run.core_report(results, 1)
    assert sum(1 for x in text.splitlines() if x.startswith("| direct |")) == 1


def test_strategy_lines_and_the_whole_report() -> None:
    rr, ll = run.STRATEGY_TARGETS
    results = {
        "targets": [rr, ll],
        "table": {t: {c: {"rps": 1.0, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0,
                          "errors": 0} for c in ("64", "1")} for t in (rr, ll)},
        "strategies": {"backends": 5, "throughput_ratio_ll_rr": 0.88,
                       "c1_diff_ms": {"p50": 0.012, "p99": -0.05},
                       "ratio_vs_router": {rr: 0.97, ll: 0.9}},
        "extra_report": "streaming: 0.51x the pipe",
    }
    text = run.report(results, 64)
    assert verdict_of(text, "strategy overhead LeastLatency(5) vs RoundRobin(5): "
                            "throughput ratio 0.88") == "MISS"
    assert "p50 +0.012 ms, p99 -0.050 ms (reference)" in text
    assert "RoundRobin 0.97, LeastLatency 0.90 (reference)" in text
    assert text.endswith("\n\nstreaming: 0.51x the pipe")
    assert run.report({"extra_report": "only this"}, 64) == "only this"


def test_memory_slope_in_mb_per_minute() -> None:
    assert scenarios.slope_mb_per_min([(0.0, 50.0), (30.0, 51.0), (60.0, 52.0)]) == (
        pytest.approx(2.0))
    assert scenarios.slope_mb_per_min([(0.0, 50.0), (60.0, 50.0)]) == 0.0
    assert math.isnan(scenarios.slope_mb_per_min([(0.0, 50.0)]))
    assert math.isnan(scenarios.slope_mb_per_min([(5.0, 1.0), (5.0, 2.0)]))


def test_worker_counts() -> None:
    assert scenarios.worker_counts(1) == (1,)
    assert scenarios.worker_counts(2) == (1, 2)
    assert scenarios.worker_counts(6) == (1, 2, 4, 6)
    assert scenarios.worker_counts(8) == (1, 2, 4, 8)
    assert scenarios.worker_counts(0) == (1,)


def test_external_command_lines() -> None:
    url = "http://127.0.0.1:9/v1/chat/completions"
    commands = scenarios.external_commands(url, 3)
    assert commands["wrk"][:5] == ["wrk", "-t1", "-c64", "-d3s", "--latency"]
    assert commands["wrk"][-1] == url and commands["wrk"][-2].endswith("chat_completion.lua")
    hey = commands["hey"]
    assert hey[-1] == url and hey[hey.index("-z") + 1] == "3s"
    assert json.loads(hey[hey.index("-d") + 1])["model"]
