"""Keeping the cyclic garbage collector off the request path's tail.

CPython's collector runs when enough container objects were allocated, in whatever request
happens to allocate the one too many; a collection of the oldest generation walks every
object that survived (the config, the routing tables, modules, compiled patterns: most of
the heap of a router that has started), which shows as a request that took a millisecond
longer. ``gc.freeze`` moves the objects alive now into a generation the collector never
walks, so later collections see only what requests allocate, which is small and short-lived.

The collector is process-wide: only the program that owns the process calls these (the CLI,
in each worker); a router embedded in someone else's program leaves the collector to it.

A router's live set is its requests in flight, and LLM requests wait hundreds of
milliseconds on their backend, so CPython's thresholds (700, 10, 10) fit it badly. With
1,000 such requests a young collection ran every ~35 requests and the middle generation
every ~300 ms, shorter than the wait: every waiting request's objects were promoted to the
oldest generation, which a full collection then walked every ~3 s. The middle threshold
is 20 (with the young one below, every few seconds at c=1000): the middle generation finds
most of those requests finished and freed, a tenth as many objects are promoted and full
collections nearly stop. Not more: at 100 the soak scenario's RSS grew 25 MB/min (1-2 at
20), measured while each closed client connection still left a cycle for the middle
generation to free; connections are now freed without the collector, and a larger middle
threshold has not been measured since.
The young threshold is 2,000: what requests allocate and free mostly cancels out within
that window, so young collections run 3-5x less often, each a longer pause (1.6-3.5 ms of
CPU measured at c=1000 on a busy machine, against ~0.8 ms at 700); at c=1 none runs at all.
At c=1000 with a 500 ms upstream the collector's CPU fell from 33-39 to 11-14 ms per 1,000
requests (docs/benchmarks.md, "the collector at c=1000"). Memory stays bounded: a full
collection still follows every 10 middle ones, so a cycle that reaches the oldest
generation waits for it at most that long.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["THRESHOLDS", "resettle", "settle"]

#: ``gc.set_threshold`` for a router's process: young, middle, oldest (see above).
THRESHOLDS: Final = (2000, 20, 10)


def settle() -> int:
    """Start-up is done: set the collector's thresholds for a server (:data:`THRESHOLDS`),
    freeze what is alive, and let the collector run (the CLI pauses it while the router's
    modules load and start-up builds what lives on: nothing there is garbage worth a walk,
    and 80-100 young and middle collections cost ~4 % of start-up's CPU). Returns how many
    objects are frozen.

    No collection first: the router is already serving, a full collection of start-up's
    heap takes tens of milliseconds (70-110 ms for ~38,000 objects on a loaded 2-core
    machine), and it found only a few dozen garbage objects, which stay frozen (a one-time,
    bounded cost). The freeze itself takes microseconds."""
    gc.set_threshold(*THRESHOLDS)
    gc.freeze()
    gc.enable()
    return gc.get_freeze_count()


def resettle() -> int:
    """A new config is in force: thaw, collect (so the replaced config's cycles are freed,
    never kept forever as frozen garbage, however many reloads come), and freeze what is
    alive now. That one full collection is paid once per change, not per request."""
    gc.unfreeze()
    gc.collect()
    return settle()
