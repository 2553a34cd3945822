"""The MetricsSink applies its inbox in groups (one child update per group, buckets tallied
in C): the series it produces must be what applying each observation on its own produces —
the same series, the same bucket counts and totals — whatever the mix of routes, statuses,
backends, streams, retries and failovers, and however the drains cut it. (Series of one family
may be listed in another order: a group creates a pair's stream series when its first stream
with a first token arrives, which can be after another group's.)
"""

from __future__ import annotations

import random
from bisect import bisect_left
from typing import cast

import pytest
from prometheus_client import generate_latest

from continuum.actors.catalog import ModelCatalog
from continuum.actors.metrics import MetricsSink
from continuum.core.messages import RequestObserved
from continuum.observability.metrics import OTHER, HistogramChild, Metrics

KNOWN = {"m1", "m2"}


def _apply_one(metrics: Metrics, obs: RequestObserved) -> None:
    """The reference: one observation at a time, straight from the series' definitions (a
    pair's token series appear with the pair, as the sink's do)."""
    metrics.requests.labels(obs.method, obs.endpoint, str(obs.status)).inc()
    metrics.request_duration.labels(obs.method, obs.endpoint).observe(obs.duration)
    if obs.backend:
        pair = (obs.backend, obs.model if obs.model in KNOWN else OTHER)
        metrics.backend_duration.labels(*pair).observe(obs.backend_duration)
        prompt, completion = (metrics.tokens.labels(*pair, d) for d in ("prompt", "completion"))
        if obs.stream and obs.ttft >= 0.0:
            metrics.ttft.labels(*pair).observe(obs.ttft)
            if obs.max_gap >= 0.0:
                metrics.chunk_gap.labels(*pair).observe(obs.max_gap)
        if obs.prompt_tokens:
            prompt.inc(obs.prompt_tokens)
        if obs.completion_tokens:
            completion.inc(obs.completion_tokens)
    if obs.attempts:
        metrics.overhead.labels().observe(max(0.0, obs.duration - obs.upstream))
    for backend in obs.retried:
        metrics.retries.labels(backend).inc()
    for model in obs.failed_over:
        metrics.failovers.labels(model if model in KNOWN else OTHER).inc()


def _observation(rng: random.Random) -> RequestObserved:
    method = rng.choice(["POST", "POST", "POST", "GET"])
    endpoint = rng.choice(["/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings"])
    status = rng.choice([200, 200, 200, 429, 502])
    duration = rng.uniform(0.0, 0.02) * rng.choice([1, 1, 100])
    if rng.random() < 0.15:  # answered by the router itself
        return RequestObserved(method, endpoint, status, duration)
    stream = rng.random() < 0.3
    ttft = rng.choice([-1.0, rng.uniform(0.0, 2.0)]) if stream else -1.0
    return RequestObserved(
        method, endpoint, status, duration,
        backend=rng.choice(["a", "b"]),
        model=rng.choice(["m1", "m2", "unknown-model"]),
        backend_duration=duration * rng.uniform(0.5, 1.0),
        attempts=rng.choice([1, 1, 1, 2]),
        upstream=duration * rng.uniform(0.5, 1.2),  # past the duration: no negative overhead
        stream=stream,
        ttft=ttft,
        max_gap=rng.choice([-1.0, rng.uniform(0.0, 1.0)]) if ttft >= 0.0 else -1.0,
        prompt_tokens=rng.choice([0, 7, 1000]),
        completion_tokens=rng.choice([0, 3]),
        retried=rng.choice([(), (), ("b",), ("a", "a")]),
        failed_over=rng.choice([(), (), ("m1",), ("gone",)]),
    )


def _sink(metrics: Metrics) -> MetricsSink:
    # A drain touches neither the catalog nor the backends.
    return MetricsSink(metrics, [], KNOWN.__contains__, cast(ModelCatalog, None), lambda: 0)


def _series(metrics: Metrics) -> list[tuple[str, float]]:
    """The exposition's sample lines as (name and labels, value), the process's own series
    and the creation times aside."""
    out = []
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(("#", "process_")):
            continue
        name, value = line.rsplit(" ", 1)
        if name.split("{")[0].endswith("_created"):
            continue
        out.append((name, float(value)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_drained_groups_equal_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    observations = [_observation(rng) for _ in range(rng.choice([1, 40, 400]))]
    reference = Metrics()
    reference.overhead.labels()  # a sink reports its overhead series from the start
    for obs in observations:
        _apply_one(reference, obs)
    batched = Metrics()
    sink = _sink(batched)
    rest = observations
    while rest:  # drains of any size, one observation to all of them
        cut = rng.randint(1, len(rest))
        sink.pending.extend(rest[:cut])
        rest = rest[cut:]
        sink.drain()
        assert sink.pending == []
    got, want = dict(_series(batched)), dict(_series(reference))
    assert got.keys() == want.keys()
    for name, expected in want.items():
        if name.split("{")[0].endswith("_sum"):  # the groups add in another order
            assert got[name] == pytest.approx(expected, rel=1e-12, abs=1e-15), name
        else:
            assert got[name] == expected, name


def test_one_group_sums_bit_for_bit() -> None:
    """One group (the common batch: one route, one backend, all 200s) adds its durations in
    arrival order, as one ``observe`` each would."""
    rng = random.Random(7)
    values = [rng.uniform(0.0, 3.0) for _ in range(500)]
    one, bulk = HistogramChild((0.001, 0.1, 1.0)), HistogramChild((0.001, 0.1, 1.0))
    one.observe(0.5)
    bulk.observe(0.5)
    for value in values:
        one.observe(value)
    bulk.observe_all(values)
    assert bulk.sum == one.sum and bulk.counts == one.counts
    assert bulk.counts[bisect_left((0.001, 0.1, 1.0), 2.0)] > 0  # +Inf was reached


def test_a_group_that_raises_is_dropped_and_the_rest_wait() -> None:
    metrics = Metrics()
    sink = _sink(metrics)
    bad = RequestObserved("POST", "/v1/embeddings", 200, 0.01)
    good = RequestObserved("POST", "/v1/chat/completions", 200, 0.01)
    real = sink.observe

    def broken(group: list[RequestObserved]) -> None:
        if group[0] is bad:
            raise RuntimeError("sink bug")
        real(group)

    sink.observe = broken  # type: ignore[method-assign]
    sink.pending.extend([bad, good, bad, good])
    with pytest.raises(RuntimeError):
        sink.drain()
    assert sink.pending == [good, good]  # grouped; the raising group is gone
    sink.drain()
    assert ('http_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"}',
            2.0) in _series(metrics)
