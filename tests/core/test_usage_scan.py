"""``usage_from_body`` decodes an answer's tail from its last ``"usage"`` key first: only a
top-level key may be read that way, whatever else the body holds."""

from __future__ import annotations

import json

import pytest

from continuum.core.sse import usage_from_body


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # The usual shape: usage last, after the content.
        ({"id": "x", "choices": [{"message": {"content": "hi"}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 5}}, (3, 5)),
        # Not last: the tail still reads as an object of the top level's remaining keys.
        ({"usage": {"prompt_tokens": 1, "completion_tokens": 2}, "model": "m"}, (1, 2)),
        # A nested "usage" after the top-level one: its tail has a bracket left over, so
        # the whole body decides.
        ({"usage": {"prompt_tokens": 1, "completion_tokens": 2},
          "meta": {"usage": {"prompt_tokens": 7, "completion_tokens": 7}}}, (1, 2)),
        ({"usage": {"prompt_tokens": 4, "completion_tokens": 6},
          "choices": [{"usage": {"prompt_tokens": 8, "completion_tokens": 8}}]}, (4, 6)),
        # Only nested ones: the answer has no usage of its own.
        ({"choices": [{"usage": {"prompt_tokens": 8, "completion_tokens": 8}}]}, None),
        # "usage" as a string value (and in a string) after the real key.
        ({"usage": {"input_tokens": 9, "output_tokens": 1}, "object": "usage",
          "note": 'say "usage": {"prompt_tokens": 5}'}, (9, 1)),
        ({"usage": None, "model": "m"}, None),
    ],
)
def test_usage_from_the_top_level_only(answer: object, expected: tuple[int, int] | None
                                       ) -> None:
    for body in (json.dumps(answer).encode(), json.dumps(answer, indent=1).encode(),
                 json.dumps(answer, separators=(",", ":")).encode()):
        assert usage_from_body(body) == expected


def test_broken_bodies_have_no_usage() -> None:
    assert usage_from_body(b'{"usage":{"prompt_tokens":3') is None
    assert usage_from_body(b'{"choices":[],"usage":{"prompt_tokens":3}') is None
    assert usage_from_body(b'not json "usage"') is None
