"""Which checks a request is under (core.limits.LimitPlan), and that memory stays bounded."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from continuum.core.access import ApiKey
from continuum.core.limits import LimitPlan, LimitSpec
from continuum.core.ratelimit import ConcurrencyCheck, MemoryLimiter, Rate, RateCheck


def api_key(ident: str = "", **limits: int) -> ApiKey:
    return ApiKey(digest=(ident or "d").ljust(64, "0"), id=ident, label=ident, **limits)  # type: ignore[arg-type]


def described(checks: Sequence[RateCheck | ConcurrencyCheck]) -> list[tuple[str, str, str]]:
    out = []
    for check in checks:
        kind = "cc" if isinstance(check, ConcurrencyCheck) else "tk" if check.tokens else "rq"
        out.append((kind, check.scope, check.ident))
    return out


def test_spec_from_the_config_words() -> None:
    spec = LimitSpec.of(10, 20, 6000, 4)
    assert spec.requests == Rate(10, 20) and spec.tokens == Rate(100, 6000)
    assert spec.concurrent == 4
    assert LimitSpec.of(0.5).requests == Rate(0.5, 1)  # a burst of at least 1
    assert LimitSpec.of(5).requests == Rate(5, 5)  # one second's worth
    assert not LimitSpec.of() and LimitSpec.of(max_concurrent=1)


def test_a_keys_own_limits_then_per_api_key_then_per_client() -> None:
    plan = LimitPlan(per_client=LimitSpec.of(10, tokens_per_minute=600, max_concurrent=9),
                     per_api_key=LimitSpec.of(5))
    own = api_key("own", rate_limit=60, max_concurrent=2)
    assert described(plan.checks(own, "", "m", 100)) == [
        ("rq", "api_key", "own"), ("tk", "client", "key:own"), ("cc", "api_key", "own")]
    checks = plan.checks(own, "", "m", 100)
    assert checks[0].rate == Rate.per_minute(60)  # type: ignore[union-attr]
    plain = api_key("plain")
    assert described(plan.checks(plain, "", "m", 100)) == [
        ("rq", "api_key", "plain"), ("tk", "client", "key:plain"), ("cc", "client", "key:plain")]
    # Anonymous: by address, per_client only.
    assert described(plan.checks(None, "1.2.3.4", "m", 100)) == [
        ("rq", "client", "1.2.3.4"), ("tk", "client", "1.2.3.4"), ("cc", "client", "1.2.3.4")]
    assert plan.needs_address(None) and not plan.needs_address(plain)


def test_a_keys_checks_are_built_once_when_no_request_changes_them() -> None:
    plan = LimitPlan(global_=LimitSpec.of(100))
    key = api_key("k", rate_limit=60, max_concurrent=2)
    first = plan.checks(key, "", "m", 0)
    assert described(first) == [("rq", "api_key", "k"), ("cc", "api_key", "k"),
                                ("rq", "global", "")]
    assert plan.checks(key, "", "other", 500) is first  # the same checks, not a copy
    # A token limit's check carries the request's reservation: built per request.
    tokens = api_key("t", tokens_per_minute=6000)
    assert plan.checks(tokens, "", "m", 10) is not plan.checks(tokens, "", "m", 10)
    assert [c.cost for c in plan.checks(tokens, "", "m", 10)] == [10, 1]  # type: ignore[union-attr]
    # per_model: the model decides, so nothing is kept per key.
    by_model = LimitPlan(per_model=[("m", LimitSpec.of(1))])
    assert by_model.checks(key, "", "m", 0) is not by_model.checks(key, "", "m", 0)
    assert described(by_model.checks(key, "", "x", 0)) == [("rq", "api_key", "k"),
                                                           ("cc", "api_key", "k")]


def test_model_global_and_backend() -> None:
    plan = LimitPlan(per_model=[("gpt-4o", LimitSpec.of(1)), ("gpt-*", LimitSpec.of(2)),
                                ("empty", LimitSpec())],
                     global_=LimitSpec.of(100), per_backend=LimitSpec.of(max_concurrent=3))
    assert described(plan.checks(None, "a", "gpt-4o", 0)) == [
        ("rq", "model", "gpt-4o"), ("rq", "global", "")]
    first_match = plan.checks(None, "a", "gpt-3.5", 0)[0]
    assert isinstance(first_match, RateCheck) and first_match.rate == Rate(2, 2)
    assert described(plan.checks(None, "a", "claude", 0)) == [("rq", "global", "")]
    assert described(plan.backend_checks("b1", 0)) == [("cc", "backend", "b1")]
    assert plan.shared and plan.applies(None)


def test_what_applies() -> None:
    assert not LimitPlan().applies(None) and not LimitPlan().applies(api_key("k"))
    keyed = LimitPlan()
    assert keyed.applies(api_key("k", tokens_per_minute=5)) and not keyed.applies(None)
    assert LimitPlan(per_api_key=LimitSpec.of(1)).applies(api_key("k"))
    assert not LimitPlan(per_api_key=LimitSpec.of(1)).applies(None)
    assert LimitPlan(per_client=LimitSpec.of(1)).applies(None)
    assert LimitPlan(per_model=[("x", LimitSpec.of(tokens_per_minute=1))]).counts_tokens([])
    assert LimitPlan().counts_tokens([api_key("k", tokens_per_minute=1)])
    assert not LimitPlan(global_=LimitSpec.of(1)).counts_tokens([api_key("k", rate_limit=1)])


def test_token_cost_is_capped_at_the_bucket() -> None:
    plan = LimitPlan(global_=LimitSpec.of(tokens_per_minute=1000))
    (check,) = plan.checks(None, "", "m", 10**12)
    assert isinstance(check, RateCheck) and check.cost == 1000 and check.tokens
    (small,) = plan.checks(None, "", "m", 50)
    assert isinstance(small, RateCheck) and small.cost == 50


def test_checks_are_cached_and_the_cache_is_bounded() -> None:
    plan = LimitPlan(per_client=LimitSpec.of(1, max_concurrent=1), max_cached=100)
    first = plan.checks(None, "1.1.1.1", "m", 0)
    assert plan.checks(None, "1.1.1.1", "m", 0)[0] is first[0]
    for i in range(10_000):  # a flood of addresses
        plan.checks(None, f"10.{i // 256}.{i % 256}.1", "m", 0)
    assert plan.cached_checks <= 100


@pytest.mark.parametrize("clients", [50_000])
def test_a_flood_of_clients_keeps_memory_bounded(clients: int) -> None:
    plan = LimitPlan(per_client=LimitSpec.of(10, 20))
    limiter = MemoryLimiter(max_keys=1000)
    for i in range(clients):
        checks = plan.checks(None, f"c{i}", "m", 0)
        assert limiter.admit(checks, now=i * 0.001).allowed
    assert len(limiter) <= 1000
