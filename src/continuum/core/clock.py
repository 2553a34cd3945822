"""The router's own clock, for its timers and latencies.

``time.perf_counter`` costs ~60 ns; ``trio.current_time()`` ~400 ns (three Python calls),
and the request path reads a clock a dozen times per request. Connection timers (the
server's sweeper), pool idle times, breaker windows, cool-downs and latencies all use this
one clock. trio's own clock stays for trio deadlines (cancel scopes) and for the sans-IO
pieces tests drive with trio's MockClock (health state, deduplication, supervision).
"""

from __future__ import annotations

from time import perf_counter as now

__all__ = ["now"]
