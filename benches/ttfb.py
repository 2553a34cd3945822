"""Time to first byte of a streamed chat request: direct to a backend vs through the router.

Like the reference guide's "TTFB Test Scripts": N streamed requests straight to the backend,
N through the router, each request's TTFB, the averages and the router's overhead::

    python benches/ttfb.py --direct https://api.anthropic.com --router http://127.0.0.1:8080 \\
        --model claude-haiku-4-5 --api anthropic --api-key-env ANTHROPIC_API_KEY -n 5

* ``--api openai`` (default) sends ``POST /v1/chat/completions`` (``Authorization: Bearer``);
  ``--api anthropic`` sends ``POST /v1/messages`` (``x-api-key``, ``anthropic-version``) to
  both, the router's Anthropic front door passing it on. A URL may be the base
  (``https://api.openai.com``) or end in ``/v1``.
* The key is read from the environment variable ``--api-key-env`` names (never from the
  command line, never printed); the router gets the same header unless ``--router-key-env``
  names another variable.
* TTFB is measured like curl's ``time_starttransfer``: from opening a fresh connection (TCP,
  TLS for https) to the first byte of the response body.
* Point it at real providers if you like (that is your call: it sends N small requests per
  side); ``--self-test`` instead starts a mock upstream and a router on 127.0.0.1 and runs
  itself against them, for both APIs.

Exit code 0 when every request answered 200 with a body, 1 otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from procs import ROOT, Service, free_port

ANTHROPIC_VERSION: Final = "2023-06-01"


@dataclass(frozen=True)
class Target:
    label: str
    url: str
    key: str | None


def endpoint(base: str, api: str) -> str:
    path = "/chat/completions" if api == "openai" else "/messages"
    base = base.rstrip("/")
    return base + path if base.endswith("/v1") else base + "/v1" + path


def request_body(api: str, model: str) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in one word."}],
        "stream": True,
        "max_tokens": 16,
    }
    return json.dumps(body).encode()


def headers_for(api: str, key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if key:
            headers["x-api-key"] = key
    elif key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def measure_once(url: str, api: str, model: str, key: str | None, timeout_s: float) -> float:
    """One streamed request on a fresh connection; seconds to the first body byte."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url}")
    conn_cls = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    t0 = time.perf_counter()
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request("POST", path, body=request_body(api, model), headers=headers_for(api, key))
        resp = conn.getresponse()
        first = resp.read1(1)
        ttfb = time.perf_counter() - t0
        rest = resp.read()
        if resp.status != 200 or not (first or rest):
            snippet = (first + rest)[:200].decode(errors="replace")
            raise RuntimeError(f"HTTP {resp.status}: {snippet}")
        return ttfb
    finally:
        conn.close()


def fmt(seconds: float) -> str:
    return f"{seconds:.3f}s" if seconds >= 0.1 else f"{seconds:.6f}s"


def run_side(target: Target, api: str, model: str, n: int, timeout_s: float) -> list[float]:
    print(f"{target.label}:")
    times: list[float] = []
    for i in range(n):
        try:
            t = measure_once(target.url, api, model, target.key, timeout_s)
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            print(f"  Request {i + 1}: FAILED ({type(exc).__name__}: {exc})")
            continue
        times.append(t)
        print(f"  Request {i + 1}: TTFB={fmt(t)}")
    if times:
        print(f"  Average: {fmt(statistics.fmean(times))}")
    print()
    return times


def compare(direct: Target, router: Target, api: str, model: str, n: int, timeout_s: float) -> bool:
    """Print the guide-style report; True when every request succeeded."""
    print(f"=== {api.capitalize()} TTFB Test ===")
    print(f"Model: {model}")
    print(f"Requests per test: {n}")
    print()
    d = run_side(direct, api, model, n, timeout_s)
    r = run_side(router, api, model, n, timeout_s)
    if d and r:
        overhead = statistics.fmean(r) - statistics.fmean(d)
        print(f"Router overhead: {'-' if overhead < 0 else ''}{fmt(abs(overhead))}")
    else:
        print("Router overhead: n/a (a side had no successful request)")
    return len(d) == n and len(r) == n


SELF_TEST_CONFIG: Final = """\
server:
  bind_address: "127.0.0.1:{port}"
health_checks:
  enabled: false
logging:
  level: error
backends:
  - name: oai
    url: "http://127.0.0.1:{oai}"
    models: [ttfb-openai]
  - name: anth
    type: anthropic
    url: "http://127.0.0.1:{anth}"
    api_key: self-test-key
    models: [ttfb-anthropic]
"""


def self_test(n: int) -> bool:
    """Mock OpenAI and Anthropic upstreams (50 ms latency) and a router, all on 127.0.0.1."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    ok = True
    with tempfile.TemporaryDirectory(prefix="continuum-ttfb-") as tmp:
        work = Path(tmp)
        ports = {name: free_port("127.0.0.1") for name in ("oai", "anth", "router")}
        mocks = []
        for name, api in (("oai", "openai"), ("anth", "anthropic")):
            argv = [sys.executable, "-m", "continuum", "mock", "--api", api, "--latency", "0.05"]
            argv += ["--bind", f"127.0.0.1:{ports[name]}", "--models", f"ttfb-{api}"]
            mocks.append(
                Service(
                    name,
                    argv,
                    "127.0.0.1",
                    ports[name],
                    work / f"{name}.log",
                    env=env,
                    ready_path="/health",
                )
            )
        config = work / "router.yaml"
        config.write_text(SELF_TEST_CONFIG.format(port=ports["router"], **ports))
        router = Service(
            "router",
            [sys.executable, "-m", "continuum", "run", str(config)],
            "127.0.0.1",
            ports["router"],
            work / "router.log",
            env=env,
            ready_path="/health",
        )
        services = [*mocks, router]
        try:
            for svc in services:
                svc.start()
                svc.wait_ready()
            for api, name in (("openai", "oai"), ("anthropic", "anth")):
                direct = Target(
                    f"Direct to mock {api} upstream",
                    endpoint(f"http://127.0.0.1:{ports[name]}", api),
                    "mock-key",
                )
                via = Target(
                    "Through Router",
                    endpoint(f"http://127.0.0.1:{ports['router']}", api),
                    "mock-key",
                )
                ok = compare(direct, via, api, f"ttfb-{api}", n, 10.0) and ok
                print()
        finally:
            for svc in reversed(services):
                svc.stop()
    print(f"self-test {'passed' if ok else 'FAILED'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--direct", help="the backend's base URL")
    parser.add_argument("--router", help="the router's base URL")
    parser.add_argument("--model", help="model name (as the backend and the router know it)")
    parser.add_argument("--api", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--api-key-env", help="environment variable holding the backend's key")
    parser.add_argument("--router-key-env", help="environment variable with the router's key")
    parser.add_argument("-n", "--requests", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--self-test", action="store_true", help="run against local mocks")
    args = parser.parse_args(argv)
    if args.self_test:
        return 0 if self_test(args.requests) else 1
    if not (args.direct and args.router and args.model):
        parser.error("--direct, --router and --model are required (or --self-test)")

    def key_from(var: str | None) -> str | None:
        if var is None:
            return None
        value = os.environ.get(var)
        if not value:
            parser.error(f"environment variable {var} is not set")
        return value

    key = key_from(args.api_key_env)
    router_key = key_from(args.router_key_env) if args.router_key_env else key
    direct = Target(
        f"Direct to {urlsplit(args.direct).netloc}", endpoint(args.direct, args.api), key
    )
    router = Target("Through Router", endpoint(args.router, args.api), router_key)
    ok = compare(direct, router, args.api, args.model, args.requests, args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
