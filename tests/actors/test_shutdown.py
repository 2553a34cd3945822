"""Shutdown: streams still running when the drain runs out of time end with their API's error
event (never mid-chunk), and a second SIGINT/SIGTERM stops the process at once, as
docs/operations.md says. Signals are sent to a real ``trio-continuum run`` subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import continuum
from continuum import RouterHandle, config_from_dict
from continuum.config import MockConfig
from helpers import router_config, start_mock

HANG_GUARD = 20.0
CHAT = "/v1/chat/completions"
#: 100 tokens at 4/s: 25 s of stream, far longer than any test here waits.
SLOW = MockConfig(tokens_per_second=4, stream_chunks=100)


def chat(stream: bool = True) -> dict[str, Any]:
    return {"model": "slow", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


def messages() -> dict[str, Any]:
    return {"model": "slow", "stream": True, "max_tokens": 500,
            "messages": [{"role": "user", "content": "hi"}]}


async def read_stream(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                      started: trio.Event, out: dict[str, bytes]) -> None:
    raw = b""
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        async for data in response.aiter_raw():  # a broken chunked body would raise here
            raw += data
            started.set()
    out[path] = raw


def assert_openai_shutdown_ending(raw: bytes) -> None:
    events = raw.decode().strip().split("\n\n")
    assert events[-1] == "data: [DONE]", events[-3:]
    kind, data = events[-2].split("\n")
    assert kind == "event: error"
    error = json.loads(data.removeprefix("data: "))["error"]
    assert error["code"] == "shutting_down" and "shutting down" in error["message"]
    assert len(events) >= 3  # chunks were forwarded before it


def assert_anthropic_shutdown_ending(raw: bytes) -> None:
    events = raw.decode().strip().split("\n\n")
    kind, data = events[-1].split("\n")
    assert kind == "event: error"
    body = json.loads(data.removeprefix("data: "))
    assert body["type"] == "error" and "shutting down" in body["error"]["message"]
    assert "[DONE]" not in raw.decode()  # Anthropic streams have none
    assert events[0].startswith("event: message_start")  # the stream had begun


async def start(nursery: trio.Nursery, shutdown_timeout: float
                ) -> tuple[RouterHandle, trio.Event]:
    _mock, url = await start_mock(nursery, ("slow",), SLOW)
    data = router_config([{"name": "a", "url": url, "models": ["slow"]}])
    data["server"]["shutdown_timeout"] = shutdown_timeout
    config = config_from_dict(data, source="<test>")
    returned = trio.Event()

    async def run(task_status: trio.TaskStatus[RouterHandle]) -> None:
        await continuum.serve(config, task_status=task_status)
        returned.set()

    return await nursery.start(run), returned


@pytest.mark.parametrize("how", ["shutdown", "abort"])
async def test_streams_end_with_an_error_event_when_the_router_stops(
    nursery: trio.Nursery, how: str
) -> None:
    # The endings go out ENDING_GRACE (1 s) before the cut; a shorter timeout left 0.75 s,
    # which a loaded machine's test process (one thread, a big heap) once overran.
    handle, returned = await start(nursery, shutdown_timeout=3.0)
    out: dict[str, bytes] = {}
    async with httpx.AsyncClient(base_url=handle.url, timeout=HANG_GUARD) as client:
        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as streams:
                for path, body in ((CHAT, chat()), ("/v1/messages", messages())):
                    started = trio.Event()
                    streams.start_soon(read_stream, client, path, body, started, out)
                    await started.wait()
                stopped_at = trio.current_time()
                handle.shutdown() if how == "shutdown" else handle.abort()
            await returned.wait()
    took = trio.current_time() - stopped_at
    assert took < 10  # not the 25 s the streams would take
    assert_openai_shutdown_ending(out[CHAT])
    assert_anthropic_shutdown_ending(out["/v1/messages"])
    backend = handle.backends["a"]
    assert backend.failures == 0 and backend.in_flight == 0  # a shutdown is nobody's failure


# -- the signals, on a real process ---------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_second_signal_stops_at_once_and_streams_still_end_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "router.json"
    config.write_text(json.dumps({
        "server": {"bind_address": f"127.0.0.1:{port}", "shutdown_timeout": "60s"},
        "health_checks": {"enabled": False},
        "backends": [{"name": "m", "type": "mock", "models": ["slow"],
                      "mock": {"tokens_per_second": 4, "stream_chunks": 100}}],
    }))
    log = tmp_path / "router.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "continuum", "run", str(config)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + HANG_GUARD
        while "listening on" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}{CHAT}"
        with httpx.Client(timeout=HANG_GUARD) as client, \
                client.stream("POST", url, json=chat()) as response:
            assert response.status_code == 200
            chunks = response.iter_raw()
            raw = next(chunks)
            process.send_signal(signal.SIGTERM)  # drain: the stream goes on
            raw += next(chunks)
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)  # stop now
            signalled = time.monotonic()
            for data in chunks:
                raw += data
        assert process.wait(HANG_GUARD) == 0
        assert time.monotonic() - signalled < 10  # not the 60 s drain, nor the 25 s stream
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_openai_shutdown_ending(raw)
    text = log.read_text()
    assert "second signal: stopping now" in text and "Traceback" not in text
