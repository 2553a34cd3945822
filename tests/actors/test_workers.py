"""Multi-process mode: workers share the port, a dead one is restarted, /metrics sums."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from continuum.observability.merge import merge_expositions

A = """# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{endpoint="/v1/chat/completions",method="POST",status="200"} 3.0
# HELP backend_health_status Health.
# TYPE backend_health_status gauge
backend_health_status{backend="a"} 1.0
# HELP active_connections Open.
# TYPE active_connections gauge
active_connections 2.0
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le="0.1"} 1.0
lat_bucket{le="+Inf"} 2.0
lat_count 2.0
lat_sum 0.3
"""
B = A.replace("} 3.0", "} 4.0").replace("active_connections 2.0", "active_connections 5.0")


def _value(text: str, prefix: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
    return float(line.rsplit(" ", 1)[1])


def test_merge_sums_counters_histograms_and_amounts_but_not_states() -> None:
    merged = merge_expositions([A, B])
    assert _value(merged, 'http_requests_total{endpoint="/v1/chat/completions"') == 7.0
    assert _value(merged, "active_connections ") == 7.0
    assert _value(merged, 'backend_health_status{backend="a"}') == 1.0  # a state: max
    assert _value(merged, 'lat_bucket{le="0.1"}') == 2.0
    assert _value(merged, 'lat_bucket{le="+Inf"}') == 4.0
    assert _value(merged, "lat_count") == 4.0
    assert "# TYPE http_requests_total counter" in merged
    assert merge_expositions([merged]) == merged  # stable when re-read


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def _wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_two_workers_share_the_port_restart_and_sum_metrics(tmp_path: Path) -> None:
    config = tmp_path / "workers.yaml"
    config.write_text(
        "server:\n  bind_address: '127.0.0.1:0'\n  workers: 2\n  shutdown_timeout: 2s\n"
        "health_checks:\n  enabled: false\nlogging:\n  level: warning\n"
        "backends:\n  - name: m\n    type: mock\n    models: [demo]\n"
    )
    proc = subprocess.Popen(
        # --log-level reaches the workers: the file says warning, they log at info.
        [sys.executable, "-m", "continuum", "run", str(config), "--log-level", "info"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "2 workers on 127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for(ready)
        _wait_for(lambda: len(_children(proc.pid)) == 2)
        pids: set[int] = set()
        for _ in range(40):  # a new connection each time: the kernel spreads them
            with httpx.Client(base_url=url) as client:
                r = client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200
        workers = _children(proc.pid)
        assert len(workers) == 2
        # Summed over both workers, whichever answered /metrics. A sibling that misses the
        # scrape's 1 s budget (a loaded machine) is left out of that one scrape: ask again.
        totals: list[float] = []

        def summed() -> bool:
            with httpx.Client(base_url=url) as client:
                metrics = client.get("/metrics").text
            totals.append(_value(metrics, 'http_requests_total{endpoint="/v1/chat/completions"'))
            return totals[-1] == 40.0

        _wait_for(summed)
        assert max(totals) == 40.0, totals

        os.kill(workers[0], signal.SIGKILL)
        _wait_for(lambda: workers[0] not in _children(proc.pid)
                  and len(_children(proc.pid)) == 2)
        pids = set(_children(proc.pid))
        assert workers[0] not in pids
        _wait_for(ready)
        for _ in range(10):
            with httpx.Client(base_url=url) as client:
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        rest = proc.stderr.read()
        assert "exited with -9; restarting" in rest
        assert "continuum.supervisor: listening on 127.0.0.1:" in rest  # worker 0's summary
        assert "continuum.supervisor: worker 1: listening on" in rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
