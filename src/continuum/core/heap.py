"""Keeping the cyclic garbage collector off the request path's tail.

CPython's collector runs when enough container objects were allocated, in whatever request
happens to allocate the one too many; a collection of the oldest generation walks every
object that survived (the config, the routing tables, modules, compiled patterns: most of
the heap of a router that has started), which shows as a request that took a millisecond
longer. ``gc.freeze`` moves the objects alive now into a generation the collector never
walks, so later collections see only what requests allocate, which is small and short-lived.

The collector is process-wide: only the program that owns the process calls these (the CLI,
in each worker); a router embedded in someone else's program leaves the collector to it.

The young threshold stays CPython's (700): a larger young generation only makes each pause
longer. The middle one is raised from 10 to 100 young collections. A router's live set is
its requests in flight, and LLM requests wait hundreds of milliseconds on their backend:
with 1,000 of them a young collection runs every ~30 ms, so with CPython's 10 the middle
generation is collected every ~300 ms, shorter than the wait, and promotes every waiting
request's objects to the oldest generation, which full collections then walk again and
again (one every ~3 s at c=1000). Collected every ~3 s instead, the middle generation finds
most of those requests finished and freed; a tenth as many objects reach the oldest
generation and full collections nearly stop: the collector's CPU at c=1000 with a 500 ms
upstream about halved (docs/benchmarks.md, "the collector at c=1000"). Memory stays bounded:
a full collection still follows every 10 middle ones, and the cycles that reached the oldest
generation (closed client connections') wait for it at most that long (~10 MB at c=1000).
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["THRESHOLDS", "resettle", "settle"]

#: ``gc.set_threshold`` for a router's process: young, middle, oldest (see above).
THRESHOLDS: Final = (700, 100, 10)


def settle() -> int:
    """Start-up is done: set the collector's thresholds for a server (:data:`THRESHOLDS`)
    and freeze what is alive. Returns how many objects are frozen.

    No collection first: the router is already serving, a full collection of start-up's
    heap takes tens of milliseconds (70-110 ms for ~38,000 objects on a loaded 2-core
    machine), and it found only a few dozen garbage objects, which stay frozen (a one-time,
    bounded cost). The freeze itself takes microseconds."""
    gc.set_threshold(*THRESHOLDS)
    gc.freeze()
    return gc.get_freeze_count()


def resettle() -> int:
    """A new config is in force: thaw, collect (so the replaced config's cycles are freed,
    never kept forever as frozen garbage, however many reloads come), and freeze what is
    alive now. That one full collection is paid once per change, not per request."""
    gc.unfreeze()
    gc.collect()
    return settle()
