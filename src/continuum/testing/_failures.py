"""Which failure, if any, the mock upstream acts out for the next request (sans-IO).

Two sources, in this order:

1. failures queued with :meth:`FailurePlan.push` (``MockUpstream.fail_next``): each one is
   used exactly once, by the first request it matches;
2. the configured ``MockConfig.failures``: each is tried in order and fires with its
   ``rate`` probability, drawn from the ``random.Random`` the plan is given.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

#: Every kind ``fail_next`` accepts.
FAILURE_KINDS: Final = frozenset(
    {"status", "reset", "reset_mid_stream", "hang", "drip", "malformed"}
)
#: The paths failures apply to unless a queued failure names its own path.
INFERENCE_PATHS: Final = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
     "/v1/moderations", "/v1/images/generations", "/v1/images/edits",
     "/v1/images/variations", "/v1/audio/speech", "/v1/audio/transcriptions",
     "/v1/audio/translations", "/v1/rerank"}
)


class FailureSpec(Protocol):
    """A configured failure (``continuum.config.MockFailure`` has this shape)."""

    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def rate(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """A failure to act out now."""

    kind: str
    status: int = 500


@dataclass(frozen=True, slots=True)
class _Queued:
    failure: Failure
    path: str | None


def check_kind(kind: str) -> str:
    if kind not in FAILURE_KINDS:
        raise ValueError(
            f"unknown failure kind {kind!r}; expected one of {', '.join(sorted(FAILURE_KINDS))}"
        )
    return kind


def check_status(status: int) -> int:
    if not 100 <= status <= 599:
        raise ValueError(f"failure status must be 100..599, got {status}")
    return status


class FailurePlan:
    """Queued one-shot failures plus configured probabilistic ones."""

    def __init__(self, configured: Iterable[FailureSpec], rng: random.Random) -> None:
        self._rng = rng
        self._queue: deque[_Queued] = deque()
        self.configured: tuple[Failure, ...] = ()
        self._rates: tuple[float, ...] = ()
        self.configure(configured)

    def configure(self, configured: Iterable[FailureSpec]) -> None:
        specs = [(Failure(check_kind(f.kind), check_status(f.status)), f.rate) for f in configured]
        self.configured = tuple(f for f, _ in specs)
        self._rates = tuple(rate for _, rate in specs)

    def push(self, kind: str, count: int, status: int, path: str | None) -> None:
        failure = Failure(check_kind(kind), check_status(status))
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._queue.extend(_Queued(failure, path) for _ in range(count))

    def clear(self) -> None:
        self._queue.clear()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def pick(self, path: str) -> Failure | None:
        """The failure for a request to ``path`` (already routed to a real endpoint)."""
        for i, queued in enumerate(self._queue):
            if queued.path == path or (queued.path is None and path in INFERENCE_PATHS):
                del self._queue[i]
                return queued.failure
        if path in INFERENCE_PATHS:
            for failure, rate in zip(self.configured, self._rates, strict=True):
                if rate >= 1.0 or self._rng.random() < rate:
                    return failure
        return None


def parse_fail_spec(spec: str) -> tuple[str, int, float]:
    """``KIND[:STATUS][@RATE]`` → ``(kind, status, rate)``, e.g. ``status:503@0.25``.

    Raises ValueError with a readable message.
    """
    text = spec.strip()
    rate = 1.0
    if "@" in text:
        text, _, rate_text = text.partition("@")
        try:
            rate = float(rate_text)
        except ValueError:
            raise ValueError(f"rate {rate_text!r} in {spec!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate in {spec!r} must be between 0 and 1")
    status = 500
    if ":" in text:
        text, _, status_text = text.partition(":")
        if not status_text.isdigit():
            raise ValueError(f"status {status_text!r} in {spec!r} is not an integer")
        status = check_status(int(status_text))
    return check_kind(text), status, rate
