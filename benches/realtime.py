"""Realtime (WebSocket) relay overhead: N concurrent sessions x M messages, each message timed
from send to the mock's answer, connecting directly to the mock and through the relay, in the
same run, on 127.0.0.1 only.

Each session is closed-loop: it sends ``conversation.item.create`` (``--payload`` characters of
text), waits for ``conversation.item.added`` (the timed answer) and ``conversation.item.done``,
and sends the next. The mock and the relay run in their own processes (this one is the client);
the relay is ``continuum.net.websocket_relay.relay_upgrade`` with a usage observer, as the
router will run it. Direct and relayed phases alternate for ``--rounds`` rounds, so drift on a
shared machine hits both alike. The added latency is relayed minus direct at each percentile.

Unlike the other benches it imports ``continuum`` (the relay is not yet served by the router)::

    python benches/realtime.py                  # 16 sessions x 200 messages, 2 rounds
    python benches/realtime.py --quick          # 4 x 50, 1 round
    python benches/realtime.py --payload 32768  # audio-chunk-sized messages
"""

from __future__ import annotations

import argparse
import json
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio
import trio_websocket

ROOT: Final = Path(__file__).resolve().parent.parent
MODEL: Final = "gpt-realtime"
START_TIMEOUT_S: Final = 20.0
SESSION_TIMEOUT_S: Final = 120.0


# --- the servers (child processes) -------------------------------------------------------------


async def _serve_mock() -> None:
    from continuum.testing import MockRealtime, serve_mock_realtime

    async with trio.open_nursery() as nursery:
        print(await nursery.start(serve_mock_realtime, MockRealtime(models=())), flush=True)


async def _serve_relay(upstream: str) -> None:
    from continuum.core.realtime import UsageTally, upstream_target
    from continuum.net.websocket_relay import RelaySettings, relay_upgrade

    settings = RelaySettings()

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data or len(head) > 65536:
                    return
                head += data
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
            await relay_upgrade(
                stream, head, upstream_target(upstream, target.partition("?")[2]),
                settings=settings, observer=UsageTally().observe,
            )

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(f"127.0.0.1:{listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(handle, listeners)


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
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _report(direct: Phase, relayed: Phase, args: argparse.Namespace) -> dict[str, object]:
    rows = {}
    for phase in (direct, relayed):
        rows[phase.name] = {
            "p50_ms": _ms(phase.rtts, 0.50), "p90_ms": _ms(phase.rtts, 0.90),
            "p99_ms": _ms(phase.rtts, 0.99), "mean_ms": statistics.fmean(phase.rtts) * 1000,
            "messages_per_s": phase.messages / phase.seconds,
        }
    added = {f"added_{k}": rows["relay"][k] - rows["direct"][k]  # type: ignore[operator]
             for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
    return {"sessions": args.sessions, "messages": args.messages, "payload": args.payload,
            "rounds": args.rounds, **rows, **added}


async def _bench(args: argparse.Namespace, mock: str, relay: str) -> dict[str, object]:
    text = "x" * args.payload if args.payload else "hello"
    direct, relayed = Phase("direct", []), Phase("relay", [])
    targets = [(direct, f"ws://{mock}/v1/realtime?model={MODEL}"),
               (relayed, f"ws://{relay}/v1/realtime?model={MODEL}")]
    # A short warm-up of both, not counted.
    for _, url in targets:
        await _phase(Phase("warm-up", []), url, min(args.sessions, 4), 10, text)
    for round_ in range(args.rounds):
        for phase, url in targets if round_ % 2 == 0 else targets[::-1]:
            await _phase(phase, url, args.sessions, args.messages, text)
    return _report(direct, relayed, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=16, help="concurrent sessions (16)")
    parser.add_argument("--messages", type=int, default=200, help="messages per session (200)")
    parser.add_argument("--payload", type=int, default=0, help="text characters per message")
    parser.add_argument("--rounds", type=int, default=2, help="direct/relay rounds (2)")
    parser.add_argument("--quick", action="store_true", help="4 sessions x 50 messages, 1 round")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--serve-mock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_mock:
        trio.run(_serve_mock)
        return 0
    if args.serve_relay:
        trio.run(_serve_relay, args.serve_relay)
        return 0
    if args.quick:
        args.sessions, args.messages, args.rounds = 4, 50, 1
    if min(args.sessions, args.messages, args.rounds) < 1 or args.sessions > 512:
        parser.error("sessions (1..512), messages and rounds must be positive")
    mock_proc, mock = _spawn("--serve-mock")
    relay_proc = None
    try:
        relay_proc, relay = _spawn("--serve-relay", f"http://{mock}")
        result = trio.run(_bench, args, mock, relay)
    finally:
        for proc in (relay_proc, mock_proc):
            if proc is not None:
                proc.kill()
                proc.wait(5)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"realtime: {args.sessions} sessions x {args.messages} messages x {args.rounds} rounds, "
          f"payload {args.payload} characters (send -> conversation.item.added)")
    print(f"{'':8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'msg/s':>9}")
    for name in ("direct", "relay"):
        row = result[name]
        assert isinstance(row, dict)
        print(f"{name:8} {row['p50_ms']:8.3f} {row['p90_ms']:8.3f} {row['p99_ms']:8.3f} "
              f"{row['mean_ms']:8.3f} {row['messages_per_s']:9.0f}")
    print(f"{'added':8} {result['added_p50_ms']:8.3f} {result['added_p90_ms']:8.3f} "
          f"{result['added_p99_ms']:8.3f} {result['added_mean_ms']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
