"""core.heap: start-up's objects frozen out of the collector's walks, and a reload that
refreezes without keeping the replaced objects' cycles forever."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from continuum.core.heap import resettle, settle


class Node:
    """A container that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite runs with the collector as it found it


def test_settle_freezes_what_is_alive() -> None:
    alive = Node()
    alive.other = alive
    assert gc.get_freeze_count() == 0
    assert settle() == gc.get_freeze_count() > 0
    # ``alive`` is out of the collector's sight: not in any generation it walks
    assert not any(o is alive for o in gc.get_objects())


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
