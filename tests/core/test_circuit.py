"""The circuit breaker state machine, driven by a fake clock (no I/O, no trio)."""

from __future__ import annotations

import pytest

from continuum.core.circuit import BreakerSettings, BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**settings: float | int | bool) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(BreakerSettings(**settings), clock), clock  # type: ignore[arg-type]


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read the state afresh (a helper, so the type checker does not narrow it)."""
    return breaker.state


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.settings.failure_threshold):
        assert breaker.allow()
        breaker.record(False)
    assert state(breaker) is BreakerState.OPEN


def test_starts_closed_and_allows() -> None:
    breaker, _ = make()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.available
    assert breaker.opened_total == 0


def test_consecutive_failures_open_it() -> None:
    breaker, clock = make(failure_threshold=3)
    assert breaker.record(False) is None
    assert breaker.record(False) is None
    assert breaker.consecutive_failures == 2
    assert breaker.record(False) is BreakerState.OPEN
    assert state(breaker) is BreakerState.OPEN
    assert breaker.opened_total == 1
    assert breaker.last_change == clock.now


def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _ = make(failure_threshold=3, failure_rate_threshold=0.0)
    for _ in range(10):
        breaker.record(False)
        breaker.record(False)
        breaker.record(True)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


def test_failure_rate_opens_once_minimum_requests_reached() -> None:
    breaker, _ = make(failure_threshold=0, failure_rate_threshold=0.5, minimum_requests=10)
    # Alternating outcomes: a 50 % failure rate, but no long run of failures.
    for i in range(9):
        assert breaker.record(i % 2 == 0) is None  # 5 ok, 4 failed
    assert breaker.requests_in_window == 9
    assert state(breaker) is BreakerState.CLOSED  # below minimum_requests
    assert breaker.record(False) is BreakerState.OPEN  # 10 outcomes, 5 failed = 0.5


def test_failure_rate_below_threshold_stays_closed() -> None:
    breaker, _ = make(failure_threshold=0, failure_rate_threshold=0.5, minimum_requests=10)
    for i in range(100):
        breaker.record(i % 3 != 0)  # a third fail
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.failure_rate == pytest.approx(1 / 3, abs=0.02)


def test_window_expiry_forgets_old_failures() -> None:
    breaker, clock = make(
        failure_threshold=0, failure_rate_threshold=0.5, minimum_requests=4, window=10.0
    )
    for _ in range(3):
        breaker.record(False)
    assert breaker.failures_in_window == 3
    clock.advance(10.5)
    assert breaker.failures_in_window == 0
    assert breaker.requests_in_window == 0
    # Had the old failures counted, this one would make 4/4.
    assert breaker.record(False) is None
    assert state(breaker) is BreakerState.CLOSED
    for _ in range(3):
        breaker.record(True)
    assert breaker.failure_rate == pytest.approx(0.25)


def test_open_refuses_everything_until_the_timeout() -> None:
    breaker, clock = make(failure_threshold=2, open_timeout=30.0)
    trip(breaker)
    for _ in range(5):
        assert not breaker.allow()
    assert not breaker.available
    clock.advance(29.9)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.retry_after == pytest.approx(0.1)
    assert not breaker.allow()


def test_half_open_after_the_timeout() -> None:
    breaker, clock = make(failure_threshold=2, open_timeout=30.0)
    trip(breaker)
    opened_at = clock.now
    clock.advance(30.0)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.last_change == opened_at + 30.0
    assert breaker.retry_after == 0.0
    assert breaker.available


def test_half_open_admits_only_n_trials() -> None:
    breaker, clock = make(failure_threshold=1, open_timeout=5.0, half_open_max_requests=3)
    trip(breaker)
    clock.advance(5.0)
    assert [breaker.allow() for _ in range(5)] == [True, True, True, False, False]
    assert not breaker.available
    # A finished trial does not free a slot: the period's trials are used up.
    assert breaker.record(True) is None
    assert not breaker.allow()


def test_one_failed_trial_reopens_with_a_fresh_cool_down() -> None:
    breaker, clock = make(failure_threshold=1, open_timeout=5.0, half_open_max_requests=3)
    trip(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    assert breaker.allow()
    assert breaker.record(True) is None
    clock.advance(1.0)
    assert breaker.record(False) is BreakerState.OPEN
    assert breaker.opened_total == 2
    assert breaker.last_change == clock.now
    clock.advance(4.9)  # the first cool-down would have ended by now
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(0.1)
    assert state(breaker) is BreakerState.HALF_OPEN
    # The new half-open period has all its trials again.
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]


def test_n_successful_trials_close_it_with_a_clean_window() -> None:
    breaker, clock = make(
        failure_threshold=3, failure_rate_threshold=0.5, minimum_requests=4,
        open_timeout=5.0, half_open_max_requests=2,
    )
    trip(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    assert breaker.allow()
    assert breaker.record(True) is None
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.record(True) is BreakerState.CLOSED
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.requests_in_window == 0
    assert breaker.consecutive_failures == 0
    # Clean: two failures do not reach either threshold.
    assert breaker.record(False) is None
    assert breaker.record(False) is None
    assert state(breaker) is BreakerState.CLOSED


def test_release_trial_frees_a_slot() -> None:
    breaker, clock = make(failure_threshold=1, open_timeout=5.0, half_open_max_requests=1)
    trip(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release_trial()  # the trial was cancelled: no outcome
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert breaker.record(True) is BreakerState.CLOSED


def test_release_trial_outside_half_open_is_harmless() -> None:
    breaker, _ = make(failure_threshold=2)
    breaker.release_trial()
    assert state(breaker) is BreakerState.CLOSED
    trip(breaker)
    breaker.release_trial()
    assert state(breaker) is BreakerState.OPEN


def test_late_outcomes_while_open_are_ignored() -> None:
    breaker, clock = make(failure_threshold=1, open_timeout=5.0)
    trip(breaker)
    assert breaker.record(True) is None  # admitted before it opened
    assert breaker.record(False) is None
    assert breaker.opened_total == 1
    clock.advance(5.0)
    # Half-open with no trial in flight: a late outcome is not a trial's.
    assert breaker.record(False) is None
    assert state(breaker) is BreakerState.HALF_OPEN


def test_disabled_never_opens() -> None:
    breaker, clock = make(enabled=False, failure_threshold=1)
    for _ in range(100):
        assert breaker.allow()
        assert breaker.record(False) is None
    clock.advance(1.0)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.available
    assert breaker.opened_total == 0


def test_snapshot() -> None:
    breaker, clock = make(failure_threshold=2, open_timeout=10.0)
    breaker.record(True)
    breaker.record(False)
    snap = breaker.snapshot()
    assert snap.state is BreakerState.CLOSED
    assert (snap.requests_in_window, snap.failures_in_window) == (2, 1)
    assert snap.failure_rate == 0.5
    breaker.record(False)
    clock.advance(4.0)
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.retry_after == pytest.approx(6.0)
    assert snap.opened_total == 1


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_threshold": -1},
        {"failure_rate_threshold": 1.5},
        {"minimum_requests": 0},
        {"window": 0.0},
        {"open_timeout": -1.0},
        {"half_open_max_requests": 0},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerSettings(**settings)  # type: ignore[arg-type]


def test_long_run_keeps_the_window_bounded() -> None:
    breaker, clock = make(failure_threshold=0, failure_rate_threshold=0.9, window=1.0)
    for i in range(10_000):
        clock.advance(0.01)
        breaker.record(i % 2 == 0)
    # The window is kept as 30 slots, so it reaches back at most one slot (1/30) further.
    assert breaker.requests_in_window <= 101 + 4
    assert len(breaker._window) <= 31
    assert state(breaker) is BreakerState.CLOSED
