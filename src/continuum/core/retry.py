"""Retry pacing (sans-IO): jittered exponential backoff and upstream ``Retry-After``."""

from __future__ import annotations

import email.utils
import random
import time
from typing import final

import msgspec


@final
class Backoff(msgspec.Struct, frozen=True):
    base_delay: float = 0.05
    max_delay: float = 5.0
    exponential: bool = True
    jitter: bool = True

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        With jitter the delay is drawn from [d/2, d], so clients that failed together do
        not come back together, yet never wait longer than the un-jittered schedule.
        """
        if retry < 1 or self.base_delay <= 0:
            return 0.0
        delay = self.base_delay * (2 ** (retry - 1) if self.exponential else 1)
        delay = min(delay, self.max_delay)
        return rng.uniform(delay / 2, delay) if self.jitter else delay


def parse_retry_after(value: bytes | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent
    or unreadable. ``now`` is wall-clock time (for the date form)."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0 if seconds < 0 else None
    return seconds
