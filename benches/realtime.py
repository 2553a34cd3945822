"""Realtime (WebSocket) sessions through the router: N concurrent sessions x M messages, each
message timed from send to the mock's answer, connecting directly to the mock and through the
router with each front (native, hypercorn), in the same run, on 127.0.0.1 only.

Each session is closed-loop: it sends ``conversation.item.create`` (``--payload`` characters of
text), waits for ``conversation.item.added`` (the timed answer) and ``conversation.item.done``,
and sends the next. The mock and the routers run in their own processes (this one is the
client); the routers are ``python -m continuum run`` with one backend, the mock. The targets
take turns for ``--rounds`` rounds, so drift on a shared machine hits them alike. The added
latency is a router's minus direct at each percentile.

    python benches/realtime.py                  # 16 sessions x 200 messages, 2 rounds
    python benches/realtime.py --quick          # 4 x 50, 1 round
    python benches/realtime.py --payload 32768  # audio-chunk-sized messages
    python benches/realtime.py --fronts native  # the native front only
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio
import trio_websocket

from percentiles import nearest_rank

ROOT: Final = Path(__file__).resolve().parent.parent
MODEL: Final = "gpt-realtime"
START_TIMEOUT_S: Final = 20.0
SESSION_TIMEOUT_S: Final = 120.0


# --- the servers (child processes) -------------------------------------------------------------


async def _serve_mock() -> None:
    from continuum.testing import MockRealtime, serve_mock_realtime

    async with trio.open_nursery() as nursery:
        print(await nursery.start(serve_mock_realtime, MockRealtime(models=())), flush=True)


ROUTER_CONFIG: Final = """\
server:
  bind_address: "127.0.0.1:{port}"
  frontend: {front}
health_checks:
  enabled: false
logging:
  level: error
backends:
  - name: mock
    url: "http://{mock}"
    models: ["gpt-realtime"]
"""


def _router(front: str, mock: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m continuum run`` with ``front``, its only backend the mock; once /health
    answers, the process and its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = workdir / f"router-{front}.yaml"
    config.write_text(ROUTER_CONFIG.format(port=port, front=front, mock=mock))
    proc = subprocess.Popen([sys.executable, "-m", "continuum", "run", str(config)], cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the {front} router did not start within {START_TIMEOUT_S:g}s")


def _spawn(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start this script in a server mode; returns the process and the address it printed."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line:
        proc.kill()
        raise SystemExit(f"{' '.join(args)} did not start within {START_TIMEOUT_S:g}s")
    return proc, line


# --- the client ---------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    rtts: list[float]
    messages: int = 0
    seconds: float = 0.0


async def _session(url: str, messages: int, text: str, out: list[float]) -> None:
    event = json.dumps({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": text}]},
    })
    async with trio_websocket.open_websocket_url(url, max_message_size=1 << 24) as ws:
        created = json.loads(await ws.get_message())
        assert created["type"] == "session.created", created
        for _ in range(messages):
            started = time.perf_counter()
            await ws.send_message(event)
            added = await ws.get_message()
            out.append(time.perf_counter() - started)
            assert '"conversation.item.added"' in added, added[:200]
            await ws.get_message()  # conversation.item.done


async def _phase(phase: Phase, url: str, sessions: int, messages: int, text: str) -> None:
    started = time.perf_counter()
    with trio.fail_after(SESSION_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(sessions):
                nursery.start_soon(_session, url, messages, text, phase.rtts)
    phase.seconds += time.perf_counter() - started
    phase.messages += sessions * messages


def _ms(values: list[float], q: float) -> float:
    return nearest_rank(values, q * 100) * 1000


def _report(phases: list[Phase], args: argparse.Namespace) -> dict[str, object]:
    rows: dict[str, dict[str, float]] = {}
    for phase in phases:
        rows[phase.name] = {
            "p50_ms": _ms(phase.rtts, 0.50), "p90_ms": _ms(phase.rtts, 0.90),
            "p99_ms": _ms(phase.rtts, 0.99), "mean_ms": statistics.fmean(phase.rtts) * 1000,
            "messages_per_s": phase.messages / phase.seconds,
        }
    direct = rows["direct"]
    added = {name: {k: row[k] - direct[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
             for name, row in rows.items() if name != "direct"}
    return {"sessions": args.sessions, "messages": args.messages, "payload": args.payload,
            "rounds": args.rounds, "targets": rows, "added": added}


async def _bench(args: argparse.Namespace, targets: dict[str, str]) -> dict[str, object]:
    text = "x" * args.payload if args.payload else "hello"
    phases = [(Phase(name, []), f"ws://{address}/v1/realtime?model={MODEL}")
              for name, address in targets.items()]
    # A short warm-up of each, not counted.
    for _, url in phases:
        await _phase(Phase("warm-up", []), url, min(args.sessions, 4), 10, text)
    for round_ in range(args.rounds):
        shift = round_ % len(phases)
        for phase, url in phases[shift:] + phases[:shift]:
            await _phase(phase, url, args.sessions, args.messages, text)
    return _report([phase for phase, _ in phases], args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=16, help="concurrent sessions (16)")
    parser.add_argument("--messages", type=int, default=200, help="messages per session (200)")
    parser.add_argument("--payload", type=int, default=0, help="text characters per message")
    parser.add_argument("--rounds", type=int, default=2, help="direct/relay rounds (2)")
    parser.add_argument("--quick", action="store_true", help="4 sessions x 50 messages, 1 round")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--fronts", default="native,hypercorn",
                        help="router fronts to measure (native,hypercorn)")
    parser.add_argument("--serve-mock", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_mock:
        trio.run(_serve_mock)
        return 0
    if args.quick:
        args.sessions, args.messages, args.rounds = 4, 50, 1
    if min(args.sessions, args.messages, args.rounds) < 1 or args.sessions > 512:
        parser.error("sessions (1..512), messages and rounds must be positive")
    fronts = [f for f in args.fronts.split(",") if f]
    if not fronts or set(fronts) - {"native", "hypercorn"}:
        parser.error("--fronts: a comma-separated list of native, hypercorn")
    mock_proc, mock = _spawn("--serve-mock")
    procs = [mock_proc]
    targets = {"direct": mock}
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for front in fronts:
                proc, address = _router(front, mock, Path(workdir))
                procs.append(proc)
                targets[f"router-{front}"] = address
            result = trio.run(_bench, args, targets)
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait(5)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"realtime: {args.sessions} sessions x {args.messages} messages x {args.rounds} rounds, "
          f"payload {args.payload} characters (send -> conversation.item.added)")
    print(f"{'':17} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'msg/s':>9}")
    rows = result["targets"]
    added = result["added"]
    assert isinstance(rows, dict) and isinstance(added, dict)
    for name, row in rows.items():
        print(f"{name:17} {row['p50_ms']:8.3f} {row['p90_ms']:8.3f} {row['p99_ms']:8.3f} "
              f"{row['mean_ms']:8.3f} {row['messages_per_s']:9.0f}")
    for name, row in added.items():
        print(f"{'added ' + name[7:]:17} {row['p50_ms']:8.3f} {row['p90_ms']:8.3f} "
              f"{row['p99_ms']:8.3f} {row['mean_ms']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
