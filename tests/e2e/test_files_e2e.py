"""The router's Files API with the official openai SDK, and file resolution: a chat or
Responses request that names a stored file reaches the backend with the file inside, in
the shape that backend takes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio

from continuum import RouterHandle
from continuum.mock import MockUpstream, serve_mock
from continuum.testing._media import image_for
from helpers import router_config, start_router

MODEL = "m"
HANG_GUARD = 30
PNG = image_for("a picture") * 10
PDF = b"%PDF-1.4\n" + b"0123456789" * 500 + b"\n%%EOF\n"


async def files_router(nursery: trio.Nursery, tmp_path: Path, *, api: str = "openai",
                       files: dict[str, Any] | None = None, **sections: Any
                       ) -> tuple[MockUpstream, RouterHandle]:
    mock = MockUpstream(None, (MODEL,), name="up", seed=0, api=api)
    address = await nursery.start(serve_mock, mock)
    backend_type = {"openai": "vllm"}.get(api, api)
    router = await start_router(nursery, router_config(
        [{"name": "up", "type": backend_type, "url": f"http://{address}", "api_key": "k",
          "models": [MODEL]}],
        files={"enabled": True, "directory": str(tmp_path / "files"), **(files or {})},
        **sections))
    return mock, router


def sdk(router: RouterHandle, key: str = "x") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0,
                              timeout=20.0)


async def test_upload_list_retrieve_content_delete(nursery: trio.Nursery,
                                                   tmp_path: Path) -> None:
    _, router = await files_router(nursery, tmp_path)
    client = sdk(router)
    big = bytes(range(256)) * 16384  # 4 MiB
    with trio.fail_after(HANG_GUARD):
        made = await client.files.create(file=("notes.bin", big), purpose="user_data")
        other = await client.files.create(file=("pic.png", PNG), purpose="vision")
        listed = await client.files.list()
        vision = await client.files.list(purpose="vision")
        fetched = await client.files.retrieve(made.id)
        content = await client.files.content(made.id)
        deleted = await client.files.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(made.id)
    assert made.bytes == len(big) and made.filename == "notes.bin"
    assert made.purpose == "user_data" and made.status == "processed"
    assert {f.id for f in listed.data} == {made.id, other.id}
    assert [f.id for f in vision.data] == [other.id]
    assert fetched.id == made.id
    assert content.content == big
    assert deleted.deleted is True
    on_disk = sorted(p.name for p in (tmp_path / "files").iterdir())
    assert on_disk == [f"{other.id}.bin", f"{other.id}.json"]


async def test_chat_references_an_image_file(nursery: trio.Nursery, tmp_path: Path) -> None:
    mock, router = await files_router(nursery, tmp_path)
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        image = await client.files.create(file=("pic.png", PNG), purpose="vision")
        pdf = await client.files.create(file=("paper.pdf", PDF), purpose="user_data")
        answer = await client.chat.completions.create(model=MODEL, messages=[{
            "role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "file", "file": {"file_id": image.id}},
                {"type": "file", "file": {"file_id": pdf.id}},
                {"type": "image_file", "image_file": {"file_id": image.id, "detail": "low"}},
            ]}])
    assert answer.choices[0].message.content
    sent = json.loads(mock.last_request_body or b"{}")
    parts = sent["messages"][0]["content"]
    data_png = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert parts[1] == {"type": "image_url", "image_url": {"url": data_png}}
    assert parts[2] == {"type": "file", "file": {
        "filename": "paper.pdf",
        "file_data": "data:application/pdf;base64," + base64.b64encode(PDF).decode()}}
    assert parts[3] == {"type": "image_url", "image_url": {"url": data_png, "detail": "low"}}


async def test_anthropic_backend_gets_image_and_document_blocks(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    mock, router = await files_router(nursery, tmp_path, api="anthropic")
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        image = await client.files.create(file=("pic.png", PNG), purpose="vision")
        pdf = await client.files.create(file=("paper.pdf", PDF), purpose="user_data")
        await client.chat.completions.create(model=MODEL, messages=[{
            "role": "user", "content": [
                {"type": "text", "text": "read these"},
                {"type": "file", "file": {"file_id": image.id}},
                {"type": "file", "file": {"file_id": pdf.id}}]}])
    blocks = json.loads(mock.last_request_body or b"{}")["messages"][0]["content"]
    assert blocks[1]["type"] == "image"
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png",
                                   "data": base64.b64encode(PNG).decode()}
    assert blocks[2]["type"] == "document"
    assert blocks[2]["source"]["media_type"] == "application/pdf"


async def test_responses_input_image_and_file_by_id(nursery: trio.Nursery,
                                                    tmp_path: Path) -> None:
    mock, router = await files_router(nursery, tmp_path)
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        image = await client.files.create(file=("pic.png", PNG), purpose="vision")
        pdf = await client.files.create(file=("paper.pdf", PDF), purpose="user_data")
        response = await client.responses.create(model=MODEL, input=[{
            "role": "user", "content": [
                {"type": "input_text", "text": "describe"},
                {"type": "input_image", "file_id": image.id, "detail": "high"},
                {"type": "input_file", "file_id": pdf.id}]}])
    assert response.status == "completed"
    parts = json.loads(mock.last_request_body or b"{}")["messages"][0]["content"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1]["image_url"]["detail"] == "high"
    assert parts[2]["file"]["file_data"].startswith("data:application/pdf;base64,")


async def test_unknown_file_ids_pass_untouched(nursery: trio.Nursery, tmp_path: Path) -> None:
    mock, router = await files_router(nursery, tmp_path)
    part = {"type": "file", "file": {"file_id": "file-AbCdEfGhIjKlMnOpQrSt"}}
    with trio.fail_after(HANG_GUARD):
        await sdk(router).chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": [{"type": "text", "text": "x"}, part]}])
    assert json.loads(mock.last_request_body or b"{}")["messages"][0]["content"][1] == part


async def test_limits(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, router = await files_router(nursery, tmp_path, files={
        "max_file_size": 100_000, "max_total_size": 150_000, "max_resolved_size": 50_000})
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(openai.APIStatusError) as too_big:
            await client.files.create(file=("a.bin", b"x" * 100_001), purpose="user_data")
        first = await client.files.create(file=("a.bin", b"x" * 90_000), purpose="user_data")
        with pytest.raises(openai.APIStatusError) as full:
            await client.files.create(file=("b.bin", b"y" * 90_000), purpose="user_data")
        with pytest.raises(openai.BadRequestError):
            await client.files.create(file=("c.bin", b"z"), purpose="nonsense")  # type: ignore[arg-type]
        with pytest.raises(openai.APIStatusError) as unresolvable:
            await client.chat.completions.create(model=MODEL, messages=[{
                "role": "user", "content": [{"type": "file", "file": {"file_id": first.id}}]}])
    assert too_big.value.status_code == 413
    assert full.value.status_code == 413 and "max_total_size" in full.value.message
    assert unresolvable.value.status_code == 413
    assert sorted(p.suffix for p in (tmp_path / "files").iterdir()) == [".bin", ".json"]


@pytest.mark.parametrize("path", [
    "/v1/files/..%2F..%2Fetc%2Fpasswd", "/v1/files/../../etc/passwd",
    "/v1/files/file-..%2F..%2Fx/content", "/v1/files/file-%00abcdefabcdefabcdef",
    "/v1/files/.upload-0123456789abcdef", "/v1/files/file-0123456789abcdef0123%2e%2e",
])
async def test_path_traversal_in_ids(nursery: trio.Nursery, tmp_path: Path, path: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"do not serve")
    _, router = await files_router(nursery, tmp_path)
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url) as client:
            for method in ("GET", "DELETE"):
                response = await client.request(method, path)
                assert response.status_code in (404, 405), response.text
                assert b"do not serve" not in response.content
    assert secret.read_bytes() == b"do not serve"


async def test_files_belong_to_their_key_in_blocking_mode(nursery: trio.Nursery,
                                                          tmp_path: Path) -> None:
    _, router = await files_router(nursery, tmp_path, api_keys={
        "mode": "blocking", "api_keys": [{"key": "alice-key"}, {"key": "bob-key"}]})
    alice, bob = sdk(router, "alice-key"), sdk(router, "bob-key")
    with trio.fail_after(HANG_GUARD):
        mine = await alice.files.create(file=("a.txt", b"alice's"), purpose="user_data")
        assert [f.id for f in (await bob.files.list()).data] == []
        with pytest.raises(openai.NotFoundError):
            await bob.files.content(mine.id)
        with pytest.raises(openai.NotFoundError):
            await bob.files.delete(mine.id)
        assert (await alice.files.content(mine.id)).content == b"alice's"


async def test_ttl_expires_files(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, router = await files_router(nursery, tmp_path, files={"ttl": 1})
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        made = await client.files.create(file=("a.bin", b"soon gone"), purpose="user_data")
        assert made.expires_at is not None
        await trio.sleep(1.5)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(made.id)
        while any((tmp_path / "files").iterdir()):  # the sweeper deletes it
            await trio.sleep(0.1)


async def test_files_api_off_by_default(nursery: trio.Nursery) -> None:
    mock = MockUpstream(None, (MODEL,), name="up", seed=0)
    address = await nursery.start(serve_mock, mock)
    router = await start_router(nursery, router_config(
        [{"name": "up", "url": f"http://{address}", "models": [MODEL]}]))
    with trio.fail_after(HANG_GUARD), pytest.raises(openai.NotFoundError):
        await sdk(router).files.create(file=("a.bin", b"x"), purpose="user_data")


# -- Anthropic Messages: {"type": "image" | "document", "source": {"type": "file"}} ------

TEXT = "plain notes, ünïcode\n".encode()


def claude(router: RouterHandle, key: str = "x") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=router.url, api_key=key, max_retries=0,
                                    timeout=20.0)


def file_block(kind: str, file_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "source": {"type": "file", "file_id": file_id}, **extra}


async def upload_three(router: RouterHandle, key: str = "x") -> tuple[str, str, str]:
    client = sdk(router, key)
    image = await client.files.create(file=("pic.png", PNG), purpose="vision")
    pdf = await client.files.create(file=("paper.pdf", PDF), purpose="user_data")
    text = await client.files.create(file=("notes.txt", TEXT), purpose="user_data")
    return image.id, pdf.id, text.id


async def test_messages_file_blocks_reach_an_anthropic_backend_inlined(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    mock, router = await files_router(nursery, tmp_path, api="anthropic")
    with trio.fail_after(HANG_GUARD):
        image, pdf, text = await upload_three(router)
        answer = await claude(router).messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": [
                {"type": "text", "text": "read these"},
                file_block("image", image, cache_control={"type": "ephemeral"}),
                file_block("document", pdf, title="The paper", citations={"enabled": True}),
                file_block("document", text),
                # The media type decides: an image named by a document block is an image.
                file_block("document", image, title="dropped"),
            ]}, {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "look", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                              "content": [file_block("image", image)]}]}])
    assert answer.content
    sent = json.loads(mock.last_request_body or b"{}")["messages"]
    png = base64.b64encode(PNG).decode()
    image_block = {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": png}}
    blocks = sent[0]["content"]
    assert blocks[1] == {**image_block, "cache_control": {"type": "ephemeral"}}
    assert blocks[2] == {"type": "document", "title": "The paper",
                         "citations": {"enabled": True}, "source": {
                             "type": "base64", "media_type": "application/pdf",
                             "data": base64.b64encode(PDF).decode()}}
    assert blocks[3] == {"type": "document", "source": {
        "type": "text", "media_type": "text/plain", "data": TEXT.decode()}}
    assert blocks[4] == image_block
    assert sent[2]["content"][0]["content"] == [image_block]


async def test_messages_file_blocks_translated_for_an_openai_backend(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    mock, router = await files_router(nursery, tmp_path)
    with trio.fail_after(HANG_GUARD):
        image, pdf, text = await upload_three(router)
        answer = await claude(router).messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": [
                {"type": "text", "text": "read these"},
                file_block("image", image), file_block("document", pdf, title="paper.pdf"),
                file_block("document", text)]}])
    assert answer.content
    parts = json.loads(mock.last_request_body or b"{}")["messages"][0]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}
    assert parts[2] == {"type": "file", "file": {
        "filename": "paper.pdf",
        "file_data": "data:application/pdf;base64," + base64.b64encode(PDF).decode()}}
    assert parts[3] == {"type": "text", "text": TEXT.decode()}


async def test_messages_ids_the_router_does_not_hold_pass_untouched(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    mock, router = await files_router(nursery, tmp_path, api="anthropic")
    blocks = [{"type": "text", "text": "x"},
              file_block("document", "file-AbCdEfGhIjKlMnOpQrSt"),  # ours in shape, unknown
              file_block("image", "file_011CNha8iCJcU1wXNR6q4V8w")]  # Anthropic's own
    with trio.fail_after(HANG_GUARD):
        await claude(router).messages.create(model=MODEL, max_tokens=16, messages=[
            {"role": "user", "content": blocks}])  # type: ignore[typeddict-item]
    assert json.loads(mock.last_request_body or b"{}")["messages"][0]["content"] == blocks


async def test_messages_refusals_in_anthropic_shape(nursery: trio.Nursery,
                                                    tmp_path: Path) -> None:
    _, router = await files_router(nursery, tmp_path, api="anthropic",
                                   files={"max_resolved_size": 20_000})
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        data = await client.files.create(file=("rows.json", b'{"a": 1}'), purpose="user_data")
        big = await client.files.create(file=("big.pdf", PDF * 5), purpose="user_data")
        with pytest.raises(anthropic.BadRequestError) as unsupported:
            await claude(router).messages.create(model=MODEL, max_tokens=16, messages=[
                {"role": "user", "content": [{"type": "text", "text": "x"},
                                             file_block("document", data.id)]}])
        with pytest.raises(anthropic.APIStatusError) as oversized:
            await claude(router).messages.create(model=MODEL, max_tokens=16, messages=[
                {"role": "user", "content": [file_block("document", big.id)]}])
    assert "messages[0].content[1]" in unsupported.value.message
    assert "application/json" in unsupported.value.message
    assert unsupported.value.body["type"] == "error"  # type: ignore[index]
    assert oversized.value.status_code == 413
    assert oversized.value.body["type"] == "error"  # type: ignore[index]
    assert "max_resolved_size" in oversized.value.message
