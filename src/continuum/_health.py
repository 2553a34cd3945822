"""The health state machine of one backend (sans-IO; the HealthProber feeds it)."""

from __future__ import annotations

import enum
from typing import final


class Health(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@final
class HealthState:
    """Healthy until ``unhealthy_threshold`` consecutive failures; back after
    ``healthy_threshold`` consecutive successes. Starts healthy so a fresh router serves at
    once; the first probe round runs before ``serve`` reports ready."""

    __slots__ = ("_failures", "_successes", "healthy_threshold", "last_reason", "state",
                 "unhealthy_threshold")

    def __init__(self, unhealthy_threshold: int = 3, healthy_threshold: int = 2) -> None:
        self.unhealthy_threshold = max(1, unhealthy_threshold)
        self.healthy_threshold = max(1, healthy_threshold)
        self.state = Health.HEALTHY
        self._failures = 0
        self._successes = 0
        self.last_reason = ""

    @property
    def healthy(self) -> bool:
        return self.state is Health.HEALTHY

    def record_first(self, ok: bool, reason: str = "") -> bool:
        """The probe made before serving: one failure is enough to hold traffic back."""
        if ok:
            return self.record(True)
        changed = self.state is Health.HEALTHY
        self.state = Health.UNHEALTHY
        self._successes = 0
        self._failures = self.unhealthy_threshold
        self.last_reason = reason
        return changed

    def record(self, ok: bool, reason: str = "") -> bool:
        """Feed one outcome; True when the state changed."""
        if ok:
            self._failures = 0
            self._successes += 1
            self.last_reason = ""
            if self.state is Health.UNHEALTHY and self._successes >= self.healthy_threshold:
                self.state = Health.HEALTHY
                return True
        else:
            self._successes = 0
            self._failures += 1
            self.last_reason = reason
            if self.state is Health.HEALTHY and self._failures >= self.unhealthy_threshold:
                self.state = Health.UNHEALTHY
                return True
        return False
