"""The model-routed endpoints beyond chat, through a real router with the official openai
SDK: moderations, images (JSON and multipart), speech (binary, bytes as the mock made
them), transcriptions and translations (multipart uploads), rerank; and the routing rules
(``endpoints:``, a 404 for an endpoint no backend of the model serves)."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import Any

import httpx
import openai
import pytest
import trio

from continuum import RouterHandle
from continuum.mock import MockUpstream
from continuum.testing._media import image_for, speech_bytes
from helpers import refused_url, router_config, start_mock, start_router

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

MODEL = "omni"
HANG_GUARD = 30


def sdk(router: RouterHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0,
                              timeout=20.0)


async def one_router(nursery: trio.Nursery, *backends: dict[str, Any],
                     **sections: Any) -> RouterHandle:
    return await start_router(nursery, router_config(list(backends), **sections))


async def mock_backend(nursery: trio.Nursery, name: str = "a", **extra: Any
                       ) -> tuple[MockUpstream, dict[str, Any]]:
    mock, url = await start_mock(nursery, [MODEL], name=name)
    return mock, {"name": name, "url": url, "models": [MODEL], **extra}


async def test_moderations(nursery: trio.Nursery) -> None:
    _, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    with trio.fail_after(HANG_GUARD):
        result = await sdk(router).moderations.create(
            model=MODEL, input=["a nice day", "they will attack at dawn"])
    assert [r.flagged for r in result.results] == [False, True]
    assert result.results[1].categories.violence is True


async def test_images_generate(nursery: trio.Nursery) -> None:
    _, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    with trio.fail_after(HANG_GUARD):
        result = await sdk(router).images.generate(model=MODEL, prompt="a red fox", n=2)
    assert result.data is not None and len(result.data) == 2
    assert base64.b64decode(result.data[0].b64_json or "") == image_for("a red fox")


async def test_images_edit_multipart(nursery: trio.Nursery) -> None:
    mock, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    image = image_for("source") * 50
    with trio.fail_after(HANG_GUARD):
        result = await sdk(router).images.edit(
            model=MODEL, image=("in.png", image, "image/png"), prompt="add a hat")
        variation = await sdk(router).images.create_variation(
            model=MODEL, image=("in.png", image, "image/png"))
    digest = hashlib.sha256(image).hexdigest()
    assert result.data is not None
    assert result.data[0].revised_prompt == (
        f"edit of {len(image)} bytes sha256 {digest}: add a hat")
    assert variation.data is not None
    assert variation.data[0].revised_prompt == f"variation of {len(image)} bytes sha256 {digest}"
    assert mock.requests_by_path["/v1/images/edits"] == 1


async def test_speech_bytes_are_the_mocks(nursery: trio.Nursery) -> None:
    _, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    text = "The quick brown fox jumps over the lazy dog. " * 40  # ~700 KiB of audio
    with trio.fail_after(HANG_GUARD):
        async with sdk(router).audio.speech.with_streaming_response.create(
                model=MODEL, voice="alloy", input=text) as response:
            assert response.headers["content-type"] == "audio/mpeg"
            assert response.headers["x-continuum-backend"] == "a"
            audio = await response.read()
    assert audio == speech_bytes(MODEL, text, "alloy", "mp3")


async def test_speech_failing_mid_body_is_a_broken_transfer(nursery: trio.Nursery) -> None:
    """A binary answer has no error event: the client must see a broken body, never a
    shorter file that looks whole."""
    mock, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    mock.fail_next("reset_mid_stream", path="/v1/audio/speech")
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
            request = client.stream("POST", "/v1/audio/speech", json={
                "model": MODEL, "input": "bytes:500000", "voice": "alloy"})
            async with request as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    await response.aread()


async def test_transcription_of_a_multi_megabyte_file(nursery: trio.Nursery) -> None:
    _, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    audio = bytes(range(256)) * (5 * 4096)  # 5 MiB
    with trio.fail_after(HANG_GUARD):
        result = await sdk(router).audio.transcriptions.create(
            model=MODEL, file=("speech.wav", io.BytesIO(audio), "audio/wav"))
        translated = await sdk(router).audio.translations.create(
            model=MODEL, file=("speech.wav", audio, "audio/wav"), response_format="text")
    digest = hashlib.sha256(audio).hexdigest()
    assert result.text == f"transcribed {len(audio)} bytes sha256 {digest}"
    assert translated.strip() == f"translated {len(audio)} bytes sha256 {digest}"


async def test_transcription_stream(nursery: trio.Nursery) -> None:
    _, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    with trio.fail_after(HANG_GUARD):
        stream = await sdk(router).audio.transcriptions.create(
            model=MODEL, file=("a.wav", b"RIFF" * 100, "audio/wav"), stream=True)
        events = [event async for event in stream]
    assert events[-1].type == "transcript.text.done"
    text = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert text == events[-1].text and text.startswith("transcribed 400 bytes")


async def test_upload_uses_fallback_model_and_rewrites_the_form(nursery: trio.Nursery) -> None:
    mock, url = await start_mock(nursery, ["whisper-big"], name="b")
    router = await one_router(nursery, {"name": "b", "url": url, "models": ["whisper-big"]},
                              model_aliases={"whisper-1": "whisper-big"})
    with trio.fail_after(HANG_GUARD):
        result = await sdk(router).audio.transcriptions.create(
            model="whisper-1", file=("a.wav", b"x" * 1000, "audio/wav"))
    assert result.text.startswith("transcribed 1000 bytes")
    assert mock.requests_by_path["/v1/audio/transcriptions"] == 1


async def test_upload_retried_on_another_backend_before_it_flowed(
        nursery: trio.Nursery) -> None:
    """A backend that cannot be reached has read nothing: the upload goes to the next."""
    _, b = await mock_backend(nursery, "b")
    a = {"name": "a", "url": refused_url(nursery), "models": [MODEL]}
    router = await one_router(nursery, a, b, routing={"strategy": "RoundRobin"})
    audio = b"y" * 300_000
    with trio.fail_after(HANG_GUARD):
        for _ in range(2):  # one of the two starts with the refusing backend
            result = await sdk(router).audio.transcriptions.create(
                model=MODEL, file=("a.wav", audio, "audio/wav"))
            assert result.text.startswith("transcribed 300000 bytes")


async def test_upload_is_not_sent_twice(nursery: trio.Nursery) -> None:
    """A backend that took the upload and then failed keeps it: its answer is the outcome
    (the next backend never sees a half-replayed form)."""
    first, a = await mock_backend(nursery, "a")
    second, b = await mock_backend(nursery, "b")
    router = await one_router(nursery, a, b, routing={"strategy": "RoundRobin"})
    first.fail_next("status", status=503, path="/v1/audio/transcriptions")
    second.fail_next("status", status=503, path="/v1/audio/transcriptions")
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
            response = await client.post(
                "/v1/audio/transcriptions", data={"model": MODEL},
                files={"file": ("a.wav", b"y" * 300_000, "audio/wav")})
    assert response.status_code == 503, response.text
    seen = [m.requests_by_path.get("/v1/audio/transcriptions", 0) for m in (first, second)]
    assert sorted(seen) == [0, 1]


async def test_rerank(nursery: trio.Nursery) -> None:
    _, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
            response = await client.post("/v1/rerank", json={
                "model": MODEL, "query": "red fox", "top_n": 2,
                "documents": ["a blue whale", "the red fox runs", {"text": "red car"}]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [1, 2]
    assert results[0]["document"] == {"text": "the red fox runs"}


async def test_an_endpoint_no_backend_of_the_model_serves_is_404(
        nursery: trio.Nursery) -> None:
    mock, backend = await mock_backend(nursery, type="vllm")  # vLLM has no image API
    router = await one_router(nursery, backend)
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(openai.NotFoundError) as err:
            await sdk(router).images.generate(model=MODEL, prompt="x")
    assert err.value.code == "unsupported_endpoint"
    assert "/v1/images/generations" in err.value.message
    assert mock.requests_by_path.get("/v1/images/generations") is None


async def test_endpoints_list_picks_the_backend(nursery: trio.Nursery) -> None:
    chat_only, a = await mock_backend(nursery, "a", endpoints=["/v1/chat/completions"])
    audio, b = await mock_backend(nursery, "b", endpoints=["/v1/audio/speech"])
    router = await one_router(nursery, a, b)
    client = sdk(router)
    with trio.fail_after(HANG_GUARD):
        for _ in range(3):
            speech = await client.audio.speech.create(model=MODEL, voice="alloy", input="hi")
            assert await speech.aread() == speech_bytes(MODEL, "hi")
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert audio.requests_by_path.get("/v1/audio/speech") == 3
    assert chat_only.requests_by_path.get("/v1/audio/speech") is None
    assert chat_only.requests_by_path["/v1/chat/completions"] == 3


async def test_upload_without_model_and_malformed_forms(nursery: trio.Nursery) -> None:
    _, backend = await mock_backend(nursery)
    router = await one_router(nursery, backend)
    with trio.fail_after(HANG_GUARD):
        async with httpx.AsyncClient(base_url=router.url, timeout=20) as client:
            missing = await client.post("/v1/audio/transcriptions",
                                        files={"file": ("a.wav", b"z" * 10, "audio/wav")})
            no_boundary = await client.post(
                "/v1/audio/transcriptions", content=b"--x\r\n",
                headers={"content-type": "multipart/form-data"})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_model"
    assert no_boundary.status_code == 400
