"""Backend health: the HealthState machine (probes, warm-up, passive failures), sans-IO."""

from __future__ import annotations

from continuum.core.health import Health, HealthState


def ok(state: HealthState, now: float = 0.0) -> bool:
    return state.record_probe(200, True, "", now)


def fail(state: HealthState, now: float = 0.0, status: int = 0) -> bool:
    return state.record_probe(status, False, f"failed {status}", now)


def loading(state: HealthState, now: float) -> bool:
    return state.record_probe(503, False, "warming up", now)


# -- HealthState: thresholds -----------------------------------------------------------------


def test_starts_healthy() -> None:
    state = HealthState()
    assert state.healthy
    assert state.state is Health.HEALTHY
    assert not state.warming_up
    assert (state.unhealthy_threshold, state.healthy_threshold) == (3, 2)


def test_unhealthy_after_threshold_and_back_after_threshold() -> None:
    state = HealthState(unhealthy_threshold=3, healthy_threshold=2)
    assert not fail(state)
    assert not fail(state, status=500)
    assert fail(state)
    assert state.state is Health.UNHEALTHY
    assert state.last_reason == "failed 0"
    assert not fail(state)  # already unhealthy
    assert not ok(state)
    assert not state.healthy
    assert ok(state)
    assert state.healthy
    assert state.last_reason == ""


def test_a_success_interrupts_a_failure_streak() -> None:
    state = HealthState(unhealthy_threshold=2)
    for _ in range(5):
        fail(state)
        ok(state)
    assert state.healthy


def test_legacy_record_api_still_works() -> None:
    state = HealthState(unhealthy_threshold=2, healthy_threshold=1)
    assert not state.record(False, "x")
    assert state.record(False, "y")
    assert state.last_reason == "y"
    assert state.record(True)
    assert state.healthy


def test_first_probe_failure_holds_traffic_back() -> None:
    state = HealthState(unhealthy_threshold=3)
    assert state.record_probe(0, False, "refused", 0.0, first=True)
    assert state.state is Health.UNHEALTHY
    assert state.record_first(True) is False  # one success is not enough
    state2 = HealthState()
    assert state2.record_first(False, "refused")
    assert not state2.healthy


# -- HealthState: warm-up ------------------------------------------------------------------


def test_503_means_warming_up_from_any_state() -> None:
    state = HealthState()
    assert loading(state, 10.0)
    assert state.state is Health.WARMING_UP
    assert state.warming_up and not state.healthy
    assert state.warmup_started == 10.0
    unhealthy = HealthState(unhealthy_threshold=1)
    fail(unhealthy)
    assert loading(unhealthy, 0.0)
    assert unhealthy.warming_up


def test_first_probe_503_is_warming_up() -> None:
    state = HealthState()
    assert state.record_probe(503, False, "loading", 0.0, first=True)
    assert state.warming_up


def test_warming_up_stays_through_503s_then_2xx_is_ready() -> None:
    state = HealthState(unhealthy_threshold=1, healthy_threshold=5, max_warmup_duration=60.0)
    loading(state, 0.0)
    for t in range(1, 60):
        assert not loading(state, float(t))  # 503s are not failures while warming up
    assert state.warming_up
    assert ok(state, 59.5)  # straight to healthy, healthy_threshold does not apply
    assert state.healthy
    assert state.warmup_started is None


def test_warm_up_that_lasts_too_long_is_unhealthy() -> None:
    state = HealthState(healthy_threshold=2, max_warmup_duration=300.0)
    loading(state, 100.0)
    assert not loading(state, 399.0)
    assert loading(state, 400.0)
    assert state.state is Health.UNHEALTHY
    assert state.last_reason == "still warming up after 300 s"
    # Further 503s do not restart the warm-up: it stays unhealthy...
    assert not loading(state, 401.0)
    assert state.state is Health.UNHEALTHY
    # ... until probes succeed, healthy_threshold times.
    assert not ok(state, 402.0)
    assert ok(state, 403.0)
    assert state.healthy
    # A later warm-up is a new one.
    assert loading(state, 500.0)
    assert state.warming_up


def test_other_failures_while_warming_follow_the_thresholds() -> None:
    state = HealthState(unhealthy_threshold=2)
    loading(state, 0.0)
    assert not fail(state, 1.0)
    assert state.warming_up
    assert not loading(state, 2.0)  # a 503 in between: still warming, streak reset
    assert not fail(state, 3.0)
    assert fail(state, 4.0)
    assert state.state is Health.UNHEALTHY
    assert state.warmup_started is None


def test_probe_interval() -> None:
    state = HealthState()
    assert state.probe_interval(30.0, 1.0) == 30.0
    loading(state, 0.0)
    assert state.probe_interval(30.0, 1.0) == 1.0
    ok(state)
    assert state.probe_interval(30.0, 1.0) == 30.0


# -- HealthState: passive health -----------------------------------------------------------


def test_traffic_failures_mark_it_unhealthy_before_the_next_probe() -> None:
    state = HealthState(healthy_threshold=2, passive_threshold=3)
    assert not state.record_traffic(False, "connection refused")
    assert not state.record_traffic(False, "502")
    assert state.consecutive_traffic_failures == 2
    assert state.record_traffic(False, "upstream answered 500")
    assert state.state is Health.UNHEALTHY
    assert "3 consecutive request failures" in state.last_reason
    assert "upstream answered 500" in state.last_reason
    # Recovery is the probes' business: traffic successes do not bring it back.
    assert not state.record_traffic(True)
    assert not state.healthy
    ok(state)
    assert ok(state)
    assert state.healthy
    assert state.consecutive_traffic_failures == 0


def test_a_traffic_success_resets_the_passive_count() -> None:
    state = HealthState(passive_threshold=3)
    for _ in range(10):
        state.record_traffic(False)
        state.record_traffic(False)
        state.record_traffic(True)
    assert state.healthy


def test_passive_threshold_zero_disables_passive_health() -> None:
    state = HealthState(passive_threshold=0)
    for _ in range(100):
        assert not state.record_traffic(False, "boom")
    assert state.healthy


def test_traffic_does_not_touch_a_warming_backend() -> None:
    state = HealthState(passive_threshold=1)
    loading(state, 0.0)
    assert not state.record_traffic(False, "late failure")
    assert state.warming_up
