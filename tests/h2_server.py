"""A small HTTP/2 server on h2 for tests: the upstream behind the HTTP/2 pool's tests
(tests/net/test_h2.py) and the router's (tests/e2e/test_h2_router.py)."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from hyperframe.frame import GoAwayFrame


@dataclass
class ConnStats:
    index: int
    open_streams: set[int] = field(default_factory=set)
    max_open: int = 0
    responses: list[int] = field(default_factory=list)  # stream ids answered in full
    ignored: list[int] = field(default_factory=list)  # ids past a GOAWAY, never answered
    closed: bool = False


class H2Server:
    """Routes: /json (JSON echo of the request), /echo (body back as is), /stream?n=&gap=
    (n DATA frames with pauses), /slow?delay=, /barrier?n= (answers once n streams are open
    on the connection), /big?size=, /bighead?size= (a header value of that size)."""

    def __init__(
        self,
        tls: ssl.SSLContext | None,
        *,
        max_streams: int = 100,
        goaway_after: int | None = None,
        goaway_last_index: int = 0,
        freeze_after_handshake: bool = False,
    ) -> None:
        self.tls = tls
        self.max_streams = max_streams
        self.goaway_after = goaway_after
        self.goaway_last_index = goaway_last_index
        self.freeze = freeze_after_handshake
        self.conns: list[ConnStats] = []
        self.resets: list[int] = []
        self.pings = 0
        self.frames_sent: dict[int, int] = {}
        self.port = 0

    @property
    def max_open(self) -> int:
        return max((c.max_open for c in self.conns), default=0)

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, self._handle, listeners)
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    async def _handle(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if self.tls is not None:
            tls = trio.SSLStream(tcp, self.tls, server_side=True, https_compatible=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                return
            stream = tls
        stats = ConnStats(len(self.conns))
        self.conns.append(stats)
        try:
            await _ServerConn(self, stream, stats).run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            stats.closed = True
            await trio.aclose_forcefully(stream)


class _ServerConn:
    def __init__(self, server: H2Server, stream: trio.abc.Stream, stats: ConnStats) -> None:
        self.server = server
        self.stream = stream
        self.stats = stats
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_streams},
        )
        self.lock = trio.Lock()
        self.window = trio.Event()
        self.open_changed = trio.Event()
        self.requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}
        self.request_ids: list[int] = []
        self.goaway_last: int | None = None

    async def flush(self, extra: bytes = b"") -> None:
        async with self.lock:
            data = self.h2.data_to_send() + extra
            if data:
                await self.stream.send_all(data)

    async def run(self) -> None:
        self.h2.initiate_connection()
        await self.flush()
        async with trio.open_nursery() as nursery:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                if self.server.freeze:
                    await trio.sleep_forever()
                for ev in self.h2.receive_data(data):
                    self.on_event(ev, nursery)
                await self.flush()
            nursery.cancel_scope.cancel()

    def stream_closed(self, stream_id: int) -> None:
        self.stats.open_streams.discard(stream_id)
        self.open_changed.set()
        self.open_changed = trio.Event()

    def on_event(self, ev: h2.events.Event, nursery: trio.Nursery) -> None:
        stats = self.stats
        if isinstance(ev, h2.events.RequestReceived):
            sid = ev.stream_id
            self.requests[sid] = ({bytes(k): bytes(v) for k, v in ev.headers}, bytearray())
            if self.goaway_last is not None and sid > self.goaway_last:
                stats.ignored.append(sid)
                return
            stats.open_streams.add(sid)
            stats.max_open = max(stats.max_open, len(stats.open_streams))
            self.open_changed.set()
            self.open_changed = trio.Event()
            self.request_ids.append(sid)
            goaway_after = self.server.goaway_after
            first_conn = stats.index == 0
            if goaway_after is not None and first_conn and len(self.request_ids) == goaway_after:
                self.goaway_last = last = self.request_ids[self.server.goaway_last_index]
                # Past the GOAWAY: never processed. Counted now, not when their (slow)
                # handlers would get there: the client may close the connection first.
                stats.ignored.extend(i for i in sorted(stats.open_streams) if i > last)
                nursery.start_soon(self.send_goaway, last)
        elif isinstance(ev, h2.events.DataReceived):
            if ev.stream_id in self.requests:
                self.requests[ev.stream_id][1].extend(ev.data)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            sid = ev.stream_id
            if sid in stats.open_streams:
                nursery.start_soon(self.respond, sid)
        elif isinstance(ev, h2.events.StreamReset):
            self.server.resets.append(ev.stream_id)
            self.stream_closed(ev.stream_id)
            self.window.set()
            self.window = trio.Event()
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()
            self.window = trio.Event()
        elif isinstance(ev, h2.events.PingReceived):
            self.server.pings += 1

    async def send_goaway(self, last: int) -> None:
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = 0
        await self.flush(frame.serialize())  # h2 itself would refuse to finish streams after it

    async def send_body(self, sid: int, data: bytes, end: bool = True) -> None:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            size = min(
                self.h2.local_flow_control_window(sid),
                self.h2.max_outbound_frame_size,
                len(data) - offset,
            )
            if size <= 0:
                await self.window.wait()
                continue
            self.h2.send_data(sid, bytes(view[offset : offset + size]))
            offset += size
            await self.flush()
        if end:
            await self.end(sid)

    async def end(self, sid: int) -> None:
        self.h2.end_stream(sid)
        self.stream_closed(sid)  # closed for h2 (and the client) from here on
        self.stats.responses.append(sid)
        await self.flush()

    async def respond(self, sid: int) -> None:
        headers, body = self.requests[sid]
        url = urlsplit(headers[b":path"].decode())
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        try:
            if path == "/slow":
                await trio.sleep(float(query.get("delay", "0.2")))
            elif path == "/barrier":
                while len(self.stats.open_streams) < int(query["n"]):
                    await self.open_changed.wait()
            if self.goaway_last is not None and sid > self.goaway_last:
                if sid not in self.stats.ignored:  # past our GOAWAY: never processed
                    self.stats.ignored.append(sid)
                return
            if path == "/stream":
                self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
                await self.flush()
                count = int(query.get("n", "5"))
                for i in range(count):
                    await self.send_body(sid, b"piece %d\n" % i, end=False)
                    self.server.frames_sent[sid] = i + 1
                    await trio.sleep(float(query.get("gap", "0.05")))
                await self.end(sid)
            elif path == "/echo":
                self.h2.send_headers(
                    sid,
                    [
                        (b":status", b"200"),
                        (b"content-type", b"application/octet-stream"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                )
                await self.send_body(sid, bytes(body))
            elif path == "/bighead":
                pad = b"v" * int(query["size"])
                self.h2.send_headers(sid, [(b":status", b"200"), (b"x-pad", pad)])
                await self.send_body(sid, b"ok")
            elif path == "/big":
                size = int(query["size"])
                await self.flush()
                self.h2.send_headers(sid, [(b":status", b"200")])
                await self.send_body(sid, bytes(range(256)) * (size // 256))
            else:
                doc = {
                    "method": headers[b":method"].decode(),
                    "path": headers[b":path"].decode(),
                    "authority": headers[b":authority"].decode(),
                    "scheme": headers[b":scheme"].decode(),
                    "headers": {
                        k.decode(): v.decode() for k, v in headers.items() if not k.startswith(b":")
                    },
                    "body": body.decode(errors="replace"),
                    "stream_id": sid,
                }
                out = json.dumps(doc).encode()
                self.h2.send_headers(
                    sid,
                    [
                        (b":status", b"200"),
                        (b"content-type", b"application/json"),
                        (b"x-served-by", b"h2-test"),
                    ],
                )
                await self.send_body(sid, out)
        except h2.exceptions.StreamClosedError:
            pass  # the client reset it
        finally:
            self.stream_closed(sid)
