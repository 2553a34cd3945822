"""Hostile uploads and binary answers against a router process: multipart bombs on the
upload endpoints and the Files API, uploads past their limits, path traversal in file ids,
and a huge binary answer to a client that does not read.

Each case gets a 4xx in OpenAI's shape (or a closed connection where the client never stops
sending), never a 500 or the process's end; a second client is served while it runs; the
router's RSS stays within a bound well below the bytes thrown at it (uploads are relayed or
written to disk as they arrive, never held whole).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from harness import (
    STEP,
    RawClient,
    RouterProcess,
    Usage,
    assert_bounded,
    assert_error_shape,
    attack_rounds,
    http_request,
    one_request,
    raw_client,
    router_config,
    served_during,
    status_while_flooding,
)

MODEL = "media-model"
BOUNDARY = "adversarialboundary"
MAX_BODY = 256 * 1024
MAX_UPLOAD = 64 * 1024 * 1024
MAX_FILE = 1024 * 1024
WRITE_TIMEOUT = 2
TRANSCRIBE = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("upload-files")


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, files_dir: Path
           ) -> Iterator[RouterProcess]:
    config = router_config(
        [{"name": "media", "type": "mock", "models": [MODEL]}],
        server={"max_request_body_size": MAX_BODY, "max_upload_size": MAX_UPLOAD,
                "write_timeout": f"{WRITE_TIMEOUT}s", "request_read_timeout": "10s"},
        files={"enabled": True, "directory": str(files_dir), "max_file_size": MAX_FILE,
               "max_total_size": 4 * MAX_FILE},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("uploads")) as process:
        yield process
        process.assert_alive()


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\ncontent-disposition: {disposition}\r\n"
    if filename is not None:
        head += "content-type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def upload_head(path: str, *, length: int | None = None,
                content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: router", f"content-type: {content_type}"]
    lines.append(f"content-length: {length}" if length is not None
                 else "transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upload(path: str, body: bytes, **kwargs: str) -> bytes:
    return upload_head(path, length=len(body), **kwargs) + body


async def status_of(router: RouterProcess, data: bytes) -> tuple[int, object]:
    response = await one_request(router.address, data)
    assert response is not None, "closed without an answer"
    assert response.status != 500, response
    if response.status >= 400:
        assert_error_shape(response, response.status)
    return response.status, response.json() if response.body else None


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def peak_rss_kib(router: RouterProcess, *, reset: bool = False) -> int:
    """The process's peak RSS (VmHWM); ``reset`` starts a new peak from the current RSS
    (``/proc/PID/clear_refs``)."""
    if reset:
        Path(f"/proc/{router.pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{router.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_a_transcription_of_many_megabytes_keeps_rss_flat(router: RouterProcess) -> None:
    """A 48 MiB upload goes through to the backend whole (its digest says so) while the
    router's *peak* RSS grows by far less than the file: it is relayed as it arrives."""
    audio = bytes(range(256)) * (48 * 4096)
    body = form(part("model", MODEL.encode()), part("file", audio, "speech.wav"))
    data = upload(TRANSCRIBE, body)
    digest = hashlib.sha256(audio).hexdigest()
    del audio, body
    before = Usage.of(router)
    start = peak_rss_kib(router, reset=True)
    async with served_during(router.address):
        for _ in attack_rounds(least=2):
            status, answer = await status_of(router, data)
            assert status == 200
            assert isinstance(answer, dict)
            assert answer["text"] == f"transcribed {48 * 1024 * 1024} bytes sha256 {digest}"
    peak = (peak_rss_kib(router) - start) / 1024
    assert peak < 20, f"peak RSS grew by {peak:.1f} MiB for a 48 MiB upload"
    await assert_bounded(router, before, rss_mib=12)


async def test_huge_part_counts_are_refused(router: RouterProcess) -> None:
    """Tens of thousands of empty parts before the model field: refused at the part bound,
    without reading the rest."""
    bomb = b"".join(part(f"f{i}", b"") for i in range(50_000))
    body = bomb + part("model", MODEL.encode()) + part("file", b"x", "a.wav")
    async with served_during(router.address):
        for n in attack_rounds():
            path = (TRANSCRIBE, "/v1/images/edits", "/v1/files")[n % 3]
            status, answer = await status_of(router, upload(path, form(body)))
            assert status in (400, 413), (path, answer)


async def test_a_never_ending_part_is_cut_at_the_upload_limit(router: RouterProcess) -> None:
    """A file part that never ends (chunked, sent as fast as the router takes it) ends in a
    413 or a closed connection once max_upload_size bytes have come, on every upload path."""
    opening = upload_head(TRANSCRIBE) + chunk(
        part("model", MODEL.encode()) + f"--{BOUNDARY}\r\ncontent-disposition: form-data; "
        f'name="file"; filename="endless.wav"\r\n\r\n'.encode())
    before = Usage.of(router)
    async with served_during(router.address):
        for n in attack_rounds(seconds=0.5):
            path = (TRANSCRIBE, "/v1/files")[n % 2]
            head = opening.replace(TRANSCRIBE.encode(), path.encode(), 1)
            status = await status_while_flooding(router.address, head, chunk(b"\0" * 65536))
            assert status in (0, 413), (path, status)
    await assert_bounded(router, before, rss_mib=24)


async def test_missing_or_bad_boundaries(router: RouterProcess) -> None:
    body = form(part("model", MODEL.encode()), part("file", b"abc", "a.wav"))
    cases = [
        upload(TRANSCRIBE, body, content_type="multipart/form-data"),
        upload(TRANSCRIBE, body, content_type="multipart/form-data; boundary="),
        upload(TRANSCRIBE, body, content_type="multipart/form-data; boundary=" + "b" * 300),
        upload(TRANSCRIBE, body, content_type="multipart/form-data; boundary=other"),
        upload(TRANSCRIBE, body.replace(f"--{BOUNDARY}--".encode(), b"")),  # never closed
        upload("/v1/files", body, content_type="multipart/form-data"),
        upload("/v1/files", b"garbage" * 1000),
        upload(TRANSCRIBE, b"--" + BOUNDARY.encode() + b"\r\n" + b"x" * 100_000),  # endless head
    ]
    async with served_during(router.address):
        for n in attack_rounds(least=len(cases)):
            data = cases[n % len(cases)]
            status, answer = await status_of(router, data)
            assert 400 <= status < 500, answer


async def test_model_field_last_in_a_huge_upload(router: RouterProcess) -> None:
    """The model after a 6 MiB file: read (and held) only up to max_request_body_size, then
    a 400 that says to send the model first."""
    body = form(part("file", b"\1" * (6 * 1024 * 1024), "late.wav"), part("model", b"m"))
    before = Usage.of(router)
    async with served_during(router.address):
        for _ in attack_rounds(least=3):
            status, answer = await status_of(router, upload(TRANSCRIBE, body))
            assert status == 400
            assert isinstance(answer, dict)
            assert answer["error"]["code"] == "missing_model"
    await assert_bounded(router, before, rss_mib=12)


async def test_file_uploads_past_their_limits(router: RouterProcess, files_dir: Path) -> None:
    """Past files.max_file_size (by length and by chunks that keep coming), past
    max_upload_size by content-length: 413, and nothing is left in the directory."""
    too_big = form(part("purpose", b"user_data"), part("file", b"\2" * (2 * MAX_FILE), "f"))
    cases = [
        upload("/v1/files", too_big),
        # Chunked, so the router only learns the size as it comes.
        upload_head("/v1/files") + chunk(too_big) + b"0\r\n\r\n",
        upload_head("/v1/files", length=MAX_UPLOAD + 1),
    ]
    async with served_during(router.address):
        for n in attack_rounds(least=len(cases)):
            status, answer = await status_of(router, cases[n % len(cases)])
            assert status == 413, answer
    with trio.fail_after(STEP):
        while any(files_dir.iterdir()):
            await trio.sleep(0.05)


@pytest.mark.parametrize("target", [
    "/v1/files/..%2F..%2Fetc%2Fpasswd",
    "/v1/files/../../etc/passwd",
    "/v1/files/%2e%2e/%2e%2e/etc/passwd/content",
    "/v1/files/file-..%2F..%2F..%2Fetc%2Fpasswd/content",
    "/v1/files/file-0123456789abcdef0123%00.json",
    "/v1/files/file-" + "a" * 5000,
    "/v1/files/.upload-0000/content",
])
async def test_path_traversal_in_file_ids(router: RouterProcess, target: str) -> None:
    for method in ("GET", "DELETE"):
        response = await one_request(router.address, http_request(method, target))
        assert response is not None
        assert response.status in (400, 404, 405), response
        assert b"root:" not in response.body
        assert_error_shape(response, response.status)


async def test_a_huge_binary_answer_to_a_client_that_does_not_read(
        router: RouterProcess) -> None:
    """Speech of a gigabyte to a client that reads nothing: the router does not buffer the
    answer (RSS bounded), and drops the client after server.write_timeout."""
    body = json.dumps({"model": MODEL, "input": "bytes:1000000000", "voice": "alloy"}).encode()
    request = http_request("POST", "/v1/audio/speech", body,
                           headers=[("content-type", "application/json")])
    before = Usage.of(router)
    async with served_during(router.address):
        clients = [await RawClient.tcp(router.address, receive_buffer=16384) for _ in range(4)]
        try:
            for client in clients:
                await client.send(request)
            await trio.sleep(WRITE_TIMEOUT + 2)
        finally:
            for client in clients:
                with trio.fail_after(STEP):
                    received = await client.drain_until_eof(limit=200 * 1024 * 1024)
                await client.aclose()
                assert received < 200 * 1024 * 1024, "the router kept sending"
    await assert_bounded(router, before, rss_mib=24)


async def test_an_upload_dropped_midway_frees_everything(router: RouterProcess,
                                                         files_dir: Path) -> None:
    """Clients that vanish mid-upload (transcription relayed upstream, file being written):
    no connection, no partial file and no memory is left behind."""
    before = Usage.of(router)
    async with served_during(router.address):
        for path, fields in ((TRANSCRIBE, part("model", MODEL.encode())),
                             ("/v1/files", part("purpose", b"user_data"))):
            for _ in range(5):
                async with raw_client(router.address) as client:
                    await client.send(upload_head(path, length=MAX_FILE - 1000) + fields
                                      + part("file", b"\3" * 300_000, "cut.wav")[:-2])
                    await trio.sleep(0.1)
    await assert_bounded(router, before, rss_mib=16)
    with trio.fail_after(STEP):
        while any(files_dir.iterdir()):
            await trio.sleep(0.05)
