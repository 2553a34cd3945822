"""The health state machine of one backend (sans-IO; the HealthProber and the request path
feed it, the Router reads it).

HEALTHY
    Gets traffic. ``unhealthy_threshold`` consecutive failed probes, or ``passive_threshold``
    consecutive failed real requests, make it UNHEALTHY.
UNHEALTHY
    No traffic. ``healthy_threshold`` consecutive successful probes make it HEALTHY again
    (real traffic never brings a backend back: it gets none).
WARMING_UP
    A probe answered 503 — the backend is up but still loading its model. No traffic, and
    the prober checks it every ``warmup_check_interval`` instead of every ``interval``, so
    the first 2xx makes it HEALTHY at once. Still 503 after ``max_warmup_duration``
    seconds: UNHEALTHY (and further 503s keep it there until probes succeed).
"""

from __future__ import annotations

import enum
from typing import final


class Health(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    WARMING_UP = "warming_up"


#: The probe status that means "up, but still loading a model".
WARMING_UP_STATUS = 503


@final
class HealthState:
    """Healthy until ``unhealthy_threshold`` consecutive failures; back after
    ``healthy_threshold`` consecutive successes. Starts healthy so a fresh router serves at
    once; the first probe round runs before ``serve`` reports ready.

    ``passive_threshold`` consecutive failures of real requests (``0`` disables it) also
    mark it unhealthy; ``max_warmup_duration`` bounds how long 503 probes count as a warm-up.
    """

    __slots__ = ("_failures", "_successes", "_traffic_failures", "_warmup_expired",
                 "healthy_threshold", "last_reason", "max_warmup_duration",
                 "passive_threshold", "state", "unhealthy_threshold", "warmup_started")

    def __init__(
        self,
        unhealthy_threshold: int = 3,
        healthy_threshold: int = 2,
        *,
        passive_threshold: int = 3,
        max_warmup_duration: float = 300.0,
    ) -> None:
        self.unhealthy_threshold = max(1, unhealthy_threshold)
        self.healthy_threshold = max(1, healthy_threshold)
        self.passive_threshold = max(0, passive_threshold)
        self.max_warmup_duration = max(0.0, max_warmup_duration)
        self.state = Health.HEALTHY
        self._failures = 0
        self._successes = 0
        self._traffic_failures = 0
        #: When the current warm-up began (None when not warming up).
        self.warmup_started: float | None = None
        # The last warm-up ran out: 503s are plain failures until a probe succeeds.
        self._warmup_expired = False
        self.last_reason = ""

    def reconfigure(
        self,
        unhealthy_threshold: int,
        healthy_threshold: int,
        *,
        passive_threshold: int,
        max_warmup_duration: float,
    ) -> None:
        """New thresholds for the outcomes to come (a config reload); the state and the
        counts so far stay."""
        self.unhealthy_threshold = max(1, unhealthy_threshold)
        self.healthy_threshold = max(1, healthy_threshold)
        self.passive_threshold = max(0, passive_threshold)
        self.max_warmup_duration = max(0.0, max_warmup_duration)

    def reset(self) -> bool:
        """Back to HEALTHY with clean counts: probes were switched off, and nothing else
        would ever bring the backend back. True when the state changed."""
        changed = self.state is not Health.HEALTHY
        self._become(Health.HEALTHY, "")
        self._warmup_expired = False
        return changed

    @property
    def healthy(self) -> bool:
        return self.state is Health.HEALTHY

    @property
    def warming_up(self) -> bool:
        return self.state is Health.WARMING_UP

    @property
    def consecutive_traffic_failures(self) -> int:
        return self._traffic_failures

    def probe_interval(self, normal: float, warmup: float) -> float:
        """Seconds until the next probe: ``warmup`` while warming up, else ``normal``."""
        return warmup if self.state is Health.WARMING_UP else normal

    # -- probes --------------------------------------------------------------------------

    def record_probe(
        self, status: int, ok: bool, reason: str, now: float, *, first: bool = False
    ) -> bool:
        """Feed one probe outcome (``status`` 0 when there was no response; ``now`` from the
        same clock every time); True when the state changed. ``first`` marks the round made
        before serving, where one plain failure is enough to hold traffic back."""
        if ok:
            self._warmup_expired = False
            if self.state is Health.WARMING_UP:
                self._become(Health.HEALTHY, "")
                return True
            return self.record(True)
        if status == WARMING_UP_STATUS and not self._warmup_expired:
            return self._probe_warming(reason, now)
        if first:
            return self.record_first(False, reason)
        if self.state is Health.WARMING_UP:
            self._successes = 0
            self._failures += 1
            self.last_reason = reason
            if self._failures >= self.unhealthy_threshold:
                self._become(Health.UNHEALTHY, reason)
                return True
            return False
        return self.record(False, reason)

    def _probe_warming(self, reason: str, now: float) -> bool:
        if self.state is not Health.WARMING_UP or self.warmup_started is None:
            self._become(Health.WARMING_UP, reason or "warming up (probe answered 503)")
            self.warmup_started = now
            return True
        elapsed = now - self.warmup_started
        if elapsed >= self.max_warmup_duration:
            self._become(Health.UNHEALTHY, f"still warming up after {elapsed:.0f} s")
            self._warmup_expired = True
            return True
        # A warm-up 503 is not a failure: it does not count towards unhealthy_threshold.
        self._failures = 0
        self._successes = 0
        self.last_reason = reason or self.last_reason
        return False

    def record_first(self, ok: bool, reason: str = "") -> bool:
        """The probe made before serving: one failure is enough to hold traffic back."""
        if ok:
            return self.record(True)
        changed = self.state is not Health.UNHEALTHY
        self._become(Health.UNHEALTHY, reason)
        self._failures = self.unhealthy_threshold
        return changed

    def record(self, ok: bool, reason: str = "") -> bool:
        """Feed one probe outcome without a status (a 503 counts as a plain failure here);
        True when the state changed."""
        if ok:
            self._failures = 0
            self._successes += 1
            self.last_reason = ""
            if self.state is not Health.HEALTHY and self._successes >= self.healthy_threshold:
                self._become(Health.HEALTHY, "")
                return True
        else:
            self._successes = 0
            self._failures += 1
            self.last_reason = reason
            if self.state is not Health.UNHEALTHY and self._failures >= self.unhealthy_threshold:
                self._become(Health.UNHEALTHY, reason)
                return True
        return False

    # -- real traffic (passive health) ---------------------------------------------------

    def record_traffic(self, ok: bool, reason: str = "") -> bool:
        """Feed the outcome of one real request (``ok=False`` for a connection failure, a
        timeout or a 5xx); True when the state changed. Only a HEALTHY backend can be marked
        unhealthy this way; recovery is the probes' business."""
        if self.passive_threshold == 0:
            return False
        if ok:
            self._traffic_failures = 0
            return False
        self._traffic_failures += 1
        if self.state is Health.HEALTHY and self._traffic_failures >= self.passive_threshold:
            self._become(
                Health.UNHEALTHY,
                f"{self._traffic_failures} consecutive request failures"
                + (f" (last: {reason})" if reason else ""),
            )
            return True
        return False

    # -- internals -----------------------------------------------------------------------

    def _become(self, state: Health, reason: str) -> None:
        self.state = state
        self.last_reason = reason
        self._failures = 0
        self._successes = 0
        self._traffic_failures = 0
        if state is not Health.WARMING_UP:
            self.warmup_started = None
