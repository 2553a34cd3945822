"""core.heap: start-up's objects frozen out of the collector's walks, a reload that
refreezes without keeping the replaced objects' cycles forever, and thresholds under which a
request waiting on its backend is not promoted to the oldest generation."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from continuum.core.heap import THRESHOLDS, resettle, settle


class Node:
    """A container that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite runs with the collector as it found it
    gc.set_threshold(*thresholds)


def test_settle_freezes_what_is_alive() -> None:
    alive = Node()
    alive.other = alive
    assert gc.get_freeze_count() == 0
    assert settle() == gc.get_freeze_count() > 0
    # ``alive`` is out of the collector's sight: not in any generation it walks
    assert not any(o is alive for o in gc.get_objects())


def test_settle_lets_the_paused_collector_run_again() -> None:
    """The CLI pauses the collector for start-up; settling is what starts it again."""
    gc.disable()
    try:
        settle()
        assert gc.isenabled()
    finally:
        gc.enable()


def test_resettle_frees_the_cycles_a_reload_dropped() -> None:
    kept = [Node()]
    kept[0].other = kept[0]
    ref = weakref.ref(kept[0])
    settle()
    kept.clear()  # the replaced config's cycle: frozen, so a collection alone keeps it
    gc.collect()
    assert ref() is not None
    resettle()
    assert ref() is None and gc.get_freeze_count() > 0


def _in_generation(obj: object, generation: int) -> bool:
    return any(o is obj for o in gc.get_objects(generation=generation))


def test_a_waiting_request_outlives_young_collections_without_reaching_the_oldest() -> None:
    """Fifteen young collections pass while a request waits: under CPython's middle
    threshold (10) its objects would reach the oldest generation, which every full
    collection walks; under the router's they stay in the middle one."""
    settle()
    assert gc.get_threshold() == THRESHOLDS
    gc.collect(1)  # young and middle generations empty, their counts at zero
    waiting = Node()
    young = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal young
        if phase == "start" and info["generation"] == 0:
            young += 1

    gc.callbacks.append(count)
    try:
        held: list[list[object]] = []
        while young < 15:  # what other requests allocate meanwhile, kept alive
            held.append([])
    finally:
        gc.callbacks.remove(count)
    assert young < THRESHOLDS[1]
    assert _in_generation(waiting, 1) and not _in_generation(waiting, 2)
