"""benches/count.py end to end on a few requests: the bench upstream, the floor and a router
of this tree (its key and limits on, through an extra config file), counted per request with
bytecodes on. The figures must be there and plausible: every request answered, a few
scheduler steps each, and the router running more Python per request than the floor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import count

ROOT = Path(count.__file__).resolve().parent.parent
KEY = "sk-count-test-0123456789"
EXTRA = f"""\
api_keys:
  mode: blocking
  api_keys: [{{key: "{KEY}", id: counted}}]
metrics:
  enabled: false
"""


def test_count_floor_and_router_per_request(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA)
    out = tmp_path / "counts.json"
    argv = [sys.executable, str(ROOT / "benches" / "count.py"), "run", "floor",
            f"router={ROOT}@{extra}", "-n", "60", "--warm", "20", "--timeout", "20",
            "--header", f"Authorization: Bearer {KEY}", "--json", str(out)]
    done = subprocess.run(argv, env={**os.environ, "COUNT_OPS": "1"},
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "per request | floor | router" in done.stdout
    figures = json.loads(out.read_text())
    assert set(figures) == {"floor", "router"}
    for label, per in figures.items():
        assert per["ok"] == 60 and per["errors"] == 0, (label, per)
        # A keep-alive request at c=1 is a handful of scheduler steps, never zero.
        assert 1 <= per["step"] <= 50, (label, per["step"])
        assert per["cpu_us"] >= 0
        assert per["ops_total"] > 100, (label, per["ops_total"])
        assert per["ops"], label
    router, floor = figures["router"], figures["floor"]
    assert router["ops_total"] > floor["ops_total"]
    # The router's own request path shows up by name (the key check ran per request).
    assert any("authenticate" in name for name in router["ops"]), list(router["ops"])[:30]
    assert not any("authenticate" in name for name in floor["ops"])


def test_count_rejects_a_malformed_target() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benches" / "count.py"), "run",
                           "no-tree-given"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode != 0
    assert "LABEL=TREE" in done.stderr
