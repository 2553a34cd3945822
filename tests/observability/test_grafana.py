"""docs/grafana/router-overview.json: a valid, importable dashboard whose queries name only
metrics the router exports (checked against a real router's /metrics after real traffic)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from helpers import router_config, start_mock, start_router

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "router-overview.json"
MODEL = "gpt-test"
CHAT = "/v1/chat/completions"

#: The eight panels of the performance guide's "Grafana Dashboard" section, with their units.
GUIDE_PANELS = {
    "Request rate": "reqps",
    "Error rate": "percentunit",
    "Latency percentiles (p50 / p95 / p99)": "s",
    "Active connections": "short",
    "Backend health status": "short",
    "Cache hit rate": "percentunit",
    "Memory usage": "bytes",
    "CPU usage": "percent",
}

#: Metric names the dashboard may use although this router's /metrics does not expose them.
ALLOWED_UNEXPORTED: set[str] = set()  # every metric the dashboard uses is exported

#: Labels Prometheus adds at scrape time, and the histogram bucket label.
SCRAPE_LABELS = {"job", "instance", "le"}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in query_panels(dashboard) for t in p["targets"]]


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [$__rate_interval]
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    grouping labels or label matchers."""
    expr = _strip(expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        if word.lower() in PROMQL_WORDS:
            continue
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function call
        names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring clauses."""
    expr = _strip(expr)
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {name.strip() for name in body.split(",") if name.strip()}
    return labels


# -- structure -----------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dashboard = load()
    assert isinstance(dashboard["title"], str) and dashboard["title"]
    assert isinstance(dashboard["uid"], str) and dashboard["uid"]
    assert dashboard["id"] is None  # importable: Grafana assigns the id
    assert 36 <= dashboard["schemaVersion"] <= 41
    inputs = dashboard["__inputs"]
    assert {"name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}.items() <= (
        inputs[0].items()
    )
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), panel["title"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    for panel in query_panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert isinstance(target["expr"], str) and target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert "rate(" not in target["expr"] or "[$__rate_interval]" in target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_guide_panels_present_with_units() -> None:
    by_title = {p["title"]: p for p in query_panels(load())}
    for title, unit in GUIDE_PANELS.items():
        assert title in by_title, f"missing guide panel {title!r}"
        assert by_title[title]["fieldConfig"]["defaults"]["unit"] == unit, title
    latency = " ".join(
        t["expr"] for t in by_title["Latency percentiles (p50 / p95 / p99)"]["targets"]
    )
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, " in latency
    assert "http_request_duration_seconds_bucket" in latency


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(x_bucket{job=~"$job", a="b{c}"}'
        "[$__rate_interval]))) / on (instance) group_left (model) y_total or vector(0)"
    )
    assert metric_names(expr) == {"x_bucket", "y_total"}
    assert label_names(expr) == {"le", "job", "a", "instance"}


# -- every query names an exported metric --------------------------------------------------------


def exported(text: str) -> dict[str, set[str]]:
    """Sample names a Prometheus scrape of ``text`` yields, each with its label names (declared
    families without samples count too, with the sample names their type implies)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
    }
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = {name for sample in family.samples for name in sample.labels} - {"le"}
        for suffix in suffixes.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set()).update(labels)
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(labels)
    return out


async def scrape_after_traffic(nursery: trio.Nursery) -> str:
    _, url = await start_mock(nursery, (MODEL,))
    router = await start_router(
        nursery, router_config([{"name": "a", "url": url, "models": [MODEL]}])
    )
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=router.url, timeout=10.0) as client:
        for _ in range(2):  # a cache miss, then a hit
            assert (await client.get("/v1/models")).status_code == 200
        assert (await client.post(CHAT, json=body)).status_code == 200
        async with client.stream("POST", CHAT, json={**body, "stream": True}) as stream:
            assert stream.status_code == 200
            assert b"[DONE]" in b"".join([chunk async for chunk in stream.aiter_bytes()])
        assert (await client.post(CHAT, json={**body, "model": "nope"})).status_code == 404
        with trio.fail_after(10):
            while True:  # observations reach the metrics sink asynchronously
                text = (await client.get("/metrics")).text
                if 'status="404"' in text:
                    return text
                await trio.sleep(0.02)


async def test_queries_name_only_exported_metrics(nursery: trio.Nursery) -> None:
    metrics = exported(await scrape_after_traffic(nursery))
    assert "http_request_duration_seconds_bucket" in metrics  # the scrape parsed
    dashboard = load()
    used: set[str] = set()
    problems = []
    for expr in exprs(dashboard):
        names = metric_names(expr)
        assert names, f"no metric name found in {expr!r}"
        used |= names
        unknown = names - metrics.keys() - ALLOWED_UNEXPORTED
        if unknown:
            problems.append(f"{sorted(unknown)} not exported by the router, in {expr!r}")
            continue
        if names <= metrics.keys() and all(metrics[name] for name in names):
            known = set().union(*(metrics[name] for name in names)) | SCRAPE_LABELS
            if label_names(expr) - known:
                problems.append(f"labels {sorted(label_names(expr) - known)} unknown in {expr!r}")
    assert not problems, "\n".join(problems)
    unused = ALLOWED_UNEXPORTED - used
    assert not unused, f"allow-list entries no query uses: {sorted(unused)}"
