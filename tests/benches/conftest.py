"""The bench tools are scripts in ``benches/``, not a package: put that folder on the path so
their tests import them as the scripts import each other."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHES = str(Path(__file__).resolve().parents[2] / "benches")
if BENCHES not in sys.path:
    sys.path.insert(0, BENCHES)
