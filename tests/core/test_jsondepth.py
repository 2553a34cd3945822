"""The JSON depth rule (continuum.core.jsondepth): exact for valid JSON, whatever is in strings."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from continuum.actors.proxy import json_too_deep_yielding
from continuum.core.jsondepth import MAX_JSON_DEPTH, json_too_deep, scan, shallow


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


# Strings full of what a naive scanner would trip on.
tricky = st.text(alphabet='[]{}"\\ab\n', max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky, inner, max_size=4),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None)
@given(values, st.integers(min_value=0, max_value=12), st.booleans())
def test_exact_for_valid_json(value: Any, limit: int, compact: bool) -> None:
    body = json.dumps(value, separators=(",", ":") if compact else None).encode()
    assert json_too_deep(body, limit) == (depth(value) > limit)


@pytest.mark.parametrize("inner", [1, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 10_000])
def test_the_documented_limit(inner: int) -> None:
    body = b'{"model": "m", "x": ' + b"[" * inner + b"]" * inner + b"}"
    assert json_too_deep(body) == (1 + inner > MAX_JSON_DEPTH)


def test_shapes_that_hide_depth() -> None:
    limit = MAX_JSON_DEPTH
    # Depth built without a long run of openings.
    interleaved = b"[" + b"[1," * limit + b"1" + b"]" * limit + b"]"
    assert json_too_deep(interleaved)
    # Closing brackets inside strings between the openings.
    hidden = b"[" + b'"]]]",[' * limit + b"]" * limit + b"]"
    assert json_too_deep(hidden)
    # Escaped quotes that a naive string cutter would take for string ends.
    escaped = b'["\\"[[[[", ' + b"[" * (limit - 2) + b"]" * (limit - 2) + b"]"
    assert not json_too_deep(escaped)
    assert depth(json.loads(escaped)) == limit - 1
    # Never closed: a decoder would recurse before it noticed.
    assert json_too_deep(b"[" * (limit + 1))
    assert json_too_deep(b'{"a":' * (limit + 1))
    # Broken in ways that recurse nowhere: the decoder reports them.
    assert not json_too_deep(b'"' + b"[" * 10_000)
    assert not json_too_deep(b"]" * 10_000 + b"[[")


def test_anything_it_passes_decodes_without_recursion_error() -> None:
    """What the check lets through stays far from Python's limit, even from a deep stack."""
    inner = MAX_JSON_DEPTH - 1
    body = b'{"model": "m", "x": ' + b"[" * inner + b"]" * inner + b"}"
    assert not json_too_deep(body)

    def recurse(levels: int) -> object:
        return msgspec.json.decode(body) if levels == 0 else recurse(levels - 1)

    recurse(600)


def test_a_large_hostile_body_yields_between_steps() -> None:
    """Wide and almost too deep (the costly shape): bounded work between two yields."""
    chains = b"[" + b",".join([b"[" * 126 + b"]" * 126] * 20_000) + b"]"
    steps = scan(chains)
    longest = 0.0
    while True:
        started = time.perf_counter()
        try:
            next(steps)
        except StopIteration as done:
            assert done.value is False
            break
        finally:
            longest = max(longest, time.perf_counter() - started)
    assert longest < 1.0  # generous: one step is about a megabyte of bytes operations


async def test_the_yielding_form_agrees() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    with trio.fail_after(10):
        assert await json_too_deep_yielding(deep)
        assert not await json_too_deep_yielding(b'{"model": "m"}')


def test_shallow_answers_only_what_counting_proves() -> None:
    """The request path skips the scan when ``shallow`` says so: never for a body that could
    nest too deep."""
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    assert not shallow(deep) and json_too_deep(deep)
    wide = b"[" + b"[]," * MAX_JSON_DEPTH + b"[]]"  # many brackets, depth 2: the scan decides
    assert not shallow(wide) and not json_too_deep(wide)
    small = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 200 + b'"}]}'
    assert shallow(small) and not json_too_deep(small)
    assert shallow(b"[" * MAX_JSON_DEPTH)  # too short to nest deeper than the limit
