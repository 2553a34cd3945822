"""The circuit breaker of one backend (sans-IO; the clock is injected).

Health probes say whether a backend *answers*; the breaker watches what real traffic
experiences and stops sending requests to a backend that keeps failing them, long before
the next probe would notice. It is a plain object driven synchronously from the request
path (trio is single-threaded, so nothing here needs a lock)::

    if breaker.allow():            # may this request go to the backend now?
        ...send it...
        breaker.record(ok)         # its outcome (or breaker.release_trial() if cancelled)

CLOSED
    Everything passes. It opens after ``failure_threshold`` consecutive failures, or once
    the sliding window of the last ``window`` seconds holds at least ``minimum_requests``
    outcomes of which at least ``failure_rate_threshold`` failed.
OPEN
    Everything is refused until ``open_timeout`` has passed; the state then reads as
    HALF_OPEN (lazily, on the next look — no timer task).
HALF_OPEN
    At most ``half_open_max_requests`` trial requests are admitted. One failed trial
    opens the breaker again with a fresh cool-down; when that many trials have succeeded
    it closes with a clean window.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

_WINDOW_SLOTS = 30


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """How one breaker trips and recovers. ``failure_threshold=0`` disables the
    consecutive-failure rule and ``failure_rate_threshold=0`` the rate rule."""

    enabled: bool = True
    #: Consecutive failures that open the breaker.
    failure_threshold: int = 5
    #: ... or this failure rate (0..1] over the sliding window ...
    failure_rate_threshold: float = 0.5
    #: ... once the window holds at least this many outcomes.
    minimum_requests: int = 20
    #: Seconds of outcomes the rate is computed over.
    window: float = 30.0
    #: Seconds an open breaker refuses everything before it lets trials through.
    open_timeout: float = 30.0
    #: Trial requests admitted while half-open; all of them must succeed to close.
    half_open_max_requests: int = 3

    def __post_init__(self) -> None:
        if self.failure_threshold < 0:
            raise ValueError(f"failure_threshold must be >= 0, got {self.failure_threshold}")
        if not 0.0 <= self.failure_rate_threshold <= 1.0:
            raise ValueError(
                f"failure_rate_threshold must be within 0..1, got {self.failure_rate_threshold}"
            )
        if self.minimum_requests < 1:
            raise ValueError(f"minimum_requests must be >= 1, got {self.minimum_requests}")
        if self.window <= 0:
            raise ValueError(f"window must be > 0, got {self.window}")
        if self.open_timeout < 0:
            raise ValueError(f"open_timeout must be >= 0, got {self.open_timeout}")
        if self.half_open_max_requests < 1:
            raise ValueError(
                f"half_open_max_requests must be >= 1, got {self.half_open_max_requests}"
            )


DEFAULT_BREAKER_SETTINGS = BreakerSettings()


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What ``/admin/health`` shows for one breaker."""

    state: BreakerState
    consecutive_failures: int
    requests_in_window: int
    failures_in_window: int
    failure_rate: float
    opened_total: int
    last_change: float
    #: Seconds until an open breaker lets trials through (0.0 unless OPEN).
    retry_after: float


@final
class CircuitBreaker:
    """One backend's breaker; see the module docstring for the rules.

    Outcomes reaching an OPEN breaker (requests admitted before it opened) are ignored, as
    are outcomes reaching a HALF_OPEN breaker while no trial is in flight. Such a late
    outcome arriving while trials *are* in flight is taken as a trial's: a late failure
    reopens the breaker early, which errs on the safe side.
    """

    __slots__ = (
        "_bucket",
        "_clock",
        "_consecutive",
        "_opened_at",
        "_slot_end",
        "_slot_width",
        "_state",
        "_trial_successes",
        "_trials",
        "_trials_in_flight",
        "_window",
        "_window_failures",
        "closed",
        "last_change",
        "opened_total",
        "settings",
    )

    def __init__(
        self, settings: BreakerSettings, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._state = BreakerState.CLOSED
        #: True while the state is CLOSED: what the request path reads, a plain attribute
        #: (no clock read, unlike :attr:`state`, which may turn OPEN into HALF_OPEN).
        self.closed = True
        self._consecutive = 0
        #: (time, ok) of every outcome in the last ``window`` seconds, oldest first.
        #: The sliding window as 30 slots: [slot, requests, failures]. Bounded whatever the
        #: request rate (a deque entry per request grew to hundreds of thousands under load,
        #: and showed up as RSS growth and cache misses on the request path).
        self._window: deque[list[int]] = deque()
        self._slot_width = settings.window / _WINDOW_SLOTS
        #: The newest slot (``_window[-1]`` while it is in the window) and the clock reading
        #: where it ends: a success inside it is one comparison and one increment.
        self._bucket = [0, 0, 0]
        self._slot_end = -math.inf
        #: Failures in the window (requests are summed over its slots when asked: only a
        #: failure or a reader needs the total, not every success).
        self._window_failures = 0
        self._opened_at = 0.0
        self._trials = 0  # trials admitted in this half-open period (in flight or done)
        self._trials_in_flight = 0
        self._trial_successes = 0
        #: How many times the breaker opened (reopening from HALF_OPEN included).
        self.opened_total = 0
        #: Clock reading of the last state change (construction counts).
        self.last_change = clock()

    # -- reading -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN:
            due = self._opened_at + self.settings.open_timeout
            if self._clock() >= due:
                self._state = BreakerState.HALF_OPEN
                self._trials = self._trials_in_flight = self._trial_successes = 0
                self.last_change = due
        return self._state

    @property
    def available(self) -> bool:
        """Would :meth:`allow` admit a request now? (Reads only; admits nothing.)"""
        if not self.settings.enabled:
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._trials < self.settings.half_open_max_requests
        return False

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def requests_in_window(self) -> int:
        self._prune(self._clock())
        return self._total()

    @property
    def failures_in_window(self) -> int:
        self._prune(self._clock())
        return self._window_failures

    @property
    def failure_rate(self) -> float:
        """Failed share of the outcomes in the window (0.0 when it is empty)."""
        self._prune(self._clock())
        total = self._total()
        return self._window_failures / total if total else 0.0

    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker admits trials; 0.0 in any other state."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.settings.open_timeout - self._clock())

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            state=self.state,
            consecutive_failures=self._consecutive,
            requests_in_window=self.requests_in_window,
            failures_in_window=self._window_failures,
            failure_rate=self.failure_rate,
            opened_total=self.opened_total,
            last_change=self.last_change,
            retry_after=self.retry_after,
        )

    def reconfigure(self, settings: BreakerSettings) -> None:
        """New settings for the outcomes to come (a config reload). The state and the
        window stay, unless the window's width changed (its slots would mean another span:
        it starts empty) or the breaker was switched off (it closes, so traffic flows)."""
        previous, self.settings = self.settings, settings
        if settings.window != previous.window:
            self._slot_width = settings.window / _WINDOW_SLOTS
            self._window.clear()
            self._window_failures = 0
            self._slot_end = -math.inf
        if not settings.enabled and self._state is not BreakerState.CLOSED:
            self._close(self._clock())

    # -- the request path ----------------------------------------------------------------

    def allow(self) -> bool:
        """May a request go to this backend now? In HALF_OPEN this admits (and counts) one
        of the ``half_open_max_requests`` trials; every admitted request must later end in
        :meth:`record` or :meth:`release_trial`."""
        if self._state is BreakerState.CLOSED or not self.settings.enabled:
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._trials < self.settings.half_open_max_requests:
            self._trials += 1
            self._trials_in_flight += 1
            return True
        return False

    def record(self, ok: bool) -> BreakerState | None:
        """The outcome of an admitted request; returns the new state if it changed."""
        if self.closed:  # the common case, without the property
            return self._record_closed(ok) if self.settings.enabled else None
        if not self.settings.enabled:
            return None
        state = self.state
        if state is BreakerState.CLOSED:
            return self._record_closed(ok)
        if state is BreakerState.HALF_OPEN and self._trials_in_flight > 0:
            self._trials_in_flight -= 1
            if not ok:
                self._open(self._clock())
                return BreakerState.OPEN
            self._trial_successes += 1
            if self._trial_successes >= self.settings.half_open_max_requests:
                self._close(self._clock())
                return BreakerState.CLOSED
        return None

    def release_trial(self) -> None:
        """An admitted request ended without an outcome (cancelled): in HALF_OPEN its trial
        slot is given back. Harmless in any other state."""
        if self.state is BreakerState.HALF_OPEN and self._trials_in_flight > 0:
            self._trials_in_flight -= 1
            self._trials -= 1

    # -- internals -----------------------------------------------------------------------

    def _record_closed(self, ok: bool) -> BreakerState | None:
        now = self._clock()
        if now >= self._slot_end:  # a new slot: the oldest may have left the window
            self._new_slot(now)
        bucket = self._bucket
        bucket[1] += 1
        if ok:
            self._consecutive = 0
            return None
        bucket[2] += 1
        self._window_failures += 1
        self._consecutive += 1
        settings = self.settings
        if 0 < settings.failure_threshold <= self._consecutive:
            self._open(now)
            return BreakerState.OPEN
        total = self._total()
        if (
            settings.failure_rate_threshold > 0.0
            and total >= settings.minimum_requests
            and self._window_failures >= settings.failure_rate_threshold * total
        ):
            self._open(now)
            return BreakerState.OPEN
        return None

    def _new_slot(self, now: float) -> None:
        self._prune(now)
        slot = int(now / self._slot_width)
        self._bucket = bucket = [slot, 0, 0]
        self._window.append(bucket)
        self._slot_end = (slot + 1) * self._slot_width

    def _total(self) -> int:
        return sum(bucket[1] for bucket in self._window)

    def _prune(self, now: float) -> None:
        # A slot leaves once all of it is older than the window: the window reaches back
        # between ``window`` and ``window`` plus one slot (1/30 of it).
        width = self._slot_width
        horizon = now - self.settings.window
        window = self._window
        while window and (window[0][0] + 1) * width <= horizon:
            self._window_failures -= window.popleft()[2]

    def _reset_counts(self) -> None:
        self._window.clear()
        self._slot_end = -math.inf
        self._window_failures = 0
        self._consecutive = 0
        self._trials = self._trials_in_flight = self._trial_successes = 0

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self.closed = False
        self._opened_at = now
        self.opened_total += 1
        self.last_change = now
        self._reset_counts()

    def _close(self, now: float) -> None:
        self._state = BreakerState.CLOSED
        self.closed = True
        self.last_change = now
        self._reset_counts()
