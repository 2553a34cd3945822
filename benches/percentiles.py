"""The one percentile every bench tool reports: nearest rank.

The smallest value with at least ``q`` % of the values at or below it, so a p99 is always
a latency that was measured (no interpolation between two samples), the same in every
tool and scenario that a report compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_rank(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values`` (any order); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return float(ordered[rank - 1])
