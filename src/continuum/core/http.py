"""HTTP shapes every layer shares.

Headers travel as a list of ``(name, value)`` byte pairs, names lower-cased, in wire order:
what httptools and h2 hand over and what a response is written from, with no dict built per
request and repeated fields kept as they came.
"""

from __future__ import annotations

from typing import TypeAlias

Headers: TypeAlias = list[tuple[bytes, bytes]]
