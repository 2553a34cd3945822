"""Keeping the cyclic garbage collector off the request path's tail.

CPython's collector runs when enough container objects were allocated, in whatever request
happens to allocate the one too many; a collection of the oldest generation walks every
object that survived (the config, the routing tables, modules, compiled patterns: most of
the heap of a router that has started), which shows as a request that took a millisecond
longer. ``gc.freeze`` moves the objects alive now into a generation the collector never
walks, so later collections see only what requests allocate, which is small and short-lived.

The collector is process-wide: only the program that owns the process calls these (the CLI,
in each worker); a router embedded in someone else's program leaves the collector to it.
The thresholds stay CPython's defaults: once start-up's objects are frozen a collection is
cheap, and a larger young generation would only make each pause longer.
"""

from __future__ import annotations

import gc

__all__ = ["resettle", "settle"]


def settle() -> int:
    """Start-up is done: freeze what is alive. Returns how many objects are frozen.

    No collection first: the router is already serving, a full collection of start-up's
    heap takes tens of milliseconds (70-110 ms for ~38,000 objects on a loaded 2-core
    machine), and it found only a few dozen garbage objects, which stay frozen (a one-time,
    bounded cost). The freeze itself takes microseconds."""
    gc.freeze()
    return gc.get_freeze_count()


def resettle() -> int:
    """A new config is in force: thaw, collect (so the replaced config's cycles are freed,
    never kept forever as frozen garbage, however many reloads come), and freeze what is
    alive now. That one full collection is paid once per change, not per request."""
    gc.unfreeze()
    gc.collect()
    return settle()
