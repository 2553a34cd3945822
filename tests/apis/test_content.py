"""One reading of ``data:`` URLs for every translator (RFC 2397).

The Anthropic and Gemini translators each had their own parser and disagreed: the
Anthropic one refused a data URL with parameters (``;charset=...``, ``;name=...``) or
percent-encoded data, and named a missing media type ``application/octet-stream``. RFC 2397
allows both forms and makes ``text/plain`` the default; this is the behaviour kept.
"""

from __future__ import annotations

import base64
import json

import pytest

from continuum.apis.anthropic import openai_to_anthropic_request
from continuum.apis.content import parse_data_url
from continuum.apis.gemini import openai_to_gemini_request
from continuum.apis.types import TranslationError

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"data:image/png;base64,{PNG}", ("image/png", PNG)),
        # parameters before ;base64 are not part of the media type
        (f"data:image/png;name=cat.png;base64,{PNG}", ("image/png", PNG)),
        # data that is not base64 is percent-decoded, then handed on as base64
        ("data:text/plain;charset=utf-8,hello%20world",
         ("text/plain", base64.b64encode(b"hello world").decode())),
        # no media type: text/plain, as RFC 2397 says
        ("data:,A%20brief%20note", ("text/plain", base64.b64encode(b"A brief note").decode())),
        (f"data:;base64,{PNG}", ("text/plain", PNG)),
    ],
)
def test_parse_data_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_data_url(url) == expected


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "data:image/png;base64", ""])
def test_not_a_data_url(url: str) -> None:
    assert parse_data_url(url) is None


def _chat_with_image(url: str) -> bytes:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": url}}]
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]}).encode()


@pytest.mark.parametrize("url", [
    f"data:image/png;name=cat.png;base64,{PNG}",
    "data:image/svg+xml,%3Csvg%2F%3E",
])
def test_both_translators_read_a_data_url_alike(url: str) -> None:
    media_type, data = parse_data_url(url) or ("", "")
    anthropic = json.loads(openai_to_anthropic_request(_chat_with_image(url), model="claude").body)
    source = anthropic["messages"][0]["content"][1]["source"]
    assert source == {"type": "base64", "media_type": media_type, "data": data}
    gemini = json.loads(openai_to_gemini_request(_chat_with_image(url), model="gemini",
                                                 stream=False).body)
    inline = gemini["contents"][0]["parts"][1]["inlineData"]
    assert inline == {"mimeType": media_type, "data": data}


def test_a_data_url_without_a_comma_is_refused_by_both() -> None:
    url = "data:image/png;base64"
    with pytest.raises(TranslationError):
        openai_to_anthropic_request(_chat_with_image(url), model="claude")
    with pytest.raises(TranslationError):
        openai_to_gemini_request(_chat_with_image(url), model="gemini", stream=False)
