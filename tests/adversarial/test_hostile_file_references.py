"""Hostile file references on ``/v1/messages`` against a router process (``files.enabled``,
blocking keys): another key's file, ids the router never made, a file past
``files.max_resolved_size``, a media type Anthropic does not take, and malformed sources.
Each is answered in Anthropic's error shape (never a 500, never another key's bytes), and
the router lives on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from harness import (
    RouterProcess,
    assert_error_shape,
    http_request,
    one_request,
    router_config,
)

MODEL = "files-model"
ALICE, BOB = "sk-alice-0123456789", "sk-bob-0123456789"
SECRET = b"alice's secret notes"
BOUNDARY = "fileboundary"
MAX_RESOLVED = 64 * 1024


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    config = router_config(
        [{"name": "files", "type": "mock", "models": [MODEL]}],
        api_keys={"mode": "blocking", "api_keys": [{"key": ALICE}, {"key": BOB}]},
        files={"enabled": True, "directory": str(tmp_path_factory.mktemp("ref-files")),
               "max_resolved_size": MAX_RESOLVED},
    )
    with RouterProcess(config, tmp_path_factory.mktemp("file-refs")) as process:
        yield process
        process.assert_alive()


async def upload(router: RouterProcess, key: str, name: str, data: bytes) -> str:
    body = (f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\n'
            f'user_data\r\n--{BOUNDARY}\r\ncontent-disposition: form-data; name="file"; '
            f'filename="{name}"\r\ncontent-type: application/octet-stream\r\n\r\n'
            ).encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    response = await one_request(router.address, http_request("POST", "/v1/files", body, headers=[
        ("authorization", f"Bearer {key}"),
        ("content-type", f"multipart/form-data; boundary={BOUNDARY}")]))
    assert response is not None and response.status == 200, response
    file_id = response.json()["id"]
    assert isinstance(file_id, str)
    return file_id


async def messages(router: RouterProcess, key: str, content: Any) -> tuple[int, Any]:
    body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": [
        {"role": "user", "content": content}]}).encode()
    response = await one_request(router.address, http_request(
        "POST", "/v1/messages", body,
        headers=[("x-api-key", key), ("content-type", "application/json")]))
    assert response is not None, "closed without an answer"
    assert response.status != 500, response
    if key != ALICE:
        assert SECRET not in response.body
    if response.status >= 400:
        assert_error_shape(response, response.status, anthropic=True)
    return response.status, response.json()


def block(kind: str, source: object) -> dict[str, object]:
    return {"type": kind, "source": source}


async def test_another_keys_file_is_not_resolved(router: RouterProcess) -> None:
    """Bob names Alice's file: the router does not hold it for him, so it passes untouched
    and the translated (OpenAI-compatible) backend cannot take a file source: 400."""
    mine = await upload(router, ALICE, "notes.txt", SECRET)
    status, answer = await messages(router, BOB, [
        block("document", {"type": "file", "file_id": mine})])
    assert status == 400, answer
    assert "messages[0].content[0]" in answer["error"]["message"]
    status, answer = await messages(router, ALICE, [
        {"type": "text", "text": "x"}, block("document", {"type": "file", "file_id": mine})])
    assert status == 200
    assert SECRET.decode() in answer["content"][0]["text"]  # the mock echoes what it got


async def test_unknown_oversized_and_unsupported_files(router: RouterProcess) -> None:
    big = await upload(router, ALICE, "big.pdf", b"%PDF-1.4\n" + b"x" * MAX_RESOLVED)
    small = await upload(router, ALICE, "small.pdf", b"%PDF-1.4\n")
    data = await upload(router, ALICE, "rows.csv", b"a,b\n1,2\n")
    unknown = "file-" + "A" * 24
    cases: list[tuple[list[object], int, str]] = [
        ([block("document", {"type": "file", "file_id": unknown})], 400,
         "messages[0].content[0]"),
        ([block("document", {"type": "file", "file_id": big})], 413, "max_resolved_size"),
        # Two files each within the limit, together past it.
        ([block("document", {"type": "file", "file_id": small})] * 2
         + [block("image", {"type": "file", "file_id": big})], 413, "max_resolved_size"),
        ([{"type": "text", "text": "x"}, block("document", {"type": "file", "file_id": data})],
         400, "messages[0].content[1]"),
    ]
    for content, status, said in cases:
        got, answer = await messages(router, ALICE, content)
        assert got == status, answer
        assert said in answer["error"]["message"], answer


@pytest.mark.parametrize("source", [
    "file-AAAAAAAAAAAAAAAAAAAAAAAA",
    {"type": "file"},
    {"type": "file", "file_id": 12345},
    {"type": "file", "file_id": None},
    {"type": "file", "file_id": ["file-AAAAAAAAAAAAAAAAAAAAAAAA"]},
    {"type": "file", "file_id": "file-../../../../etc/passwd"},
    {"type": "file", "file_id": "file-" + "A" * 100_000},
    {"type": "file", "file_id": "file-AAAAAAAAAAAAAAAAAAAAAAAA\u0000.json"},
    {"type": ["file"], "file_id": "file-AAAAAAAAAAAAAAAAAAAAAAAA"},
])
async def test_malformed_sources_are_400(router: RouterProcess, source: object) -> None:
    for kind in ("image", "document"):
        status, answer = await messages(router, ALICE, [block(kind, source)])
        assert status == 400, answer
        assert b"root:" not in json.dumps(answer).encode()


async def test_references_in_odd_places(router: RouterProcess) -> None:
    """A file block nested where Anthropic takes none, a tool_result whose content is not a
    list, deep tool_result nesting: no 500, and the router answers the next request."""
    mine = await upload(router, ALICE, "pic.txt", b"hello")
    ref = block("document", {"type": "file", "file_id": mine})
    nested: object = [ref]
    for _ in range(30):
        nested = [{"type": "tool_result", "tool_use_id": "t", "content": nested}]
    for content in ([{"type": "text", "text": "x", "extra": ref}],
                    [{"type": "tool_result", "tool_use_id": "t", "content": ref}],
                    nested, [ref] * 500):
        status, answer = await messages(router, ALICE, content)
        assert status in (200, 400), answer
    status, _ = await messages(router, ALICE, [{"type": "text", "text": "still here"}])
    assert status == 200
