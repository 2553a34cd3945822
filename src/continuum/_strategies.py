"""Load-balancing strategies: pure, synchronous choice among eligible backends.

A strategy sees the eligible candidates for one model (healthy, serving it, not yet tried
for this request) and returns one. It keeps its own counters; it never awaits, so the Router
can call it on the request path with no actor round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar, final

T = TypeVar("T")


class Strategy(Protocol):
    name: str

    def choose(self, model: str, candidates: Sequence[T]) -> T:
        """``candidates`` is never empty and keeps a stable order between calls."""
        ...


@final
class RoundRobin:
    """Each model has its own cursor, so one busy model does not skew another's spread."""

    name = "RoundRobin"

    def __init__(self) -> None:
        self._cursors: dict[str, int] = {}

    def choose(self, model: str, candidates: Sequence[T]) -> T:
        n = self._cursors.get(model, 0)
        self._cursors[model] = n + 1
        return candidates[n % len(candidates)]


def make_strategy(name: str) -> Strategy:
    """The strategy called ``name``; RoundRobin for the ones not implemented yet (the
    Router logs that), so every configuration of the reference guide runs."""
    return RoundRobin()
