"""How deeply a client's JSON body nests, decided before any decoder sees it.

Why: msgspec (like every recursive decoder) raises ``RecursionError`` on deep nesting, and
*where* it does depends on how deep the Python stack already is (about 1,000 levels minus the
caller's frames). A limit that moves with the stack is no rule, and a ``RecursionError``
escaping one request once ended the whole router. So the router refuses bodies nested deeper
than :data:`MAX_JSON_DEPTH` up front (400, "nesting too deep"), and every later decode of the
same body (the model peek, the dedup key, translators) stays far below Python's limit.

Cost: nothing for bodies of at most :data:`MAX_JSON_DEPTH` bytes, two ``bytes.count`` passes
for small bodies with few brackets (almost every request), and otherwise only C-speed
``bytes`` operations plus a Python step per *run* of brackets, never per byte:

1. escaped quotes are dropped and strings cut out (the odd pieces between quotes), leaving the
   structure's brackets, ``[{`` as ``(`` and ``]}`` as ``)``;
2. while runs are short (many innermost pairs), one ``replace("()", "")`` removes the
   innermost level everywhere at once: honest bodies (wide and shallow) vanish in a few
   passes;
3. once runs are long (deep chains), the runs are walked: depth goes up by each run of
   ``(`` and down by each run of ``)``.

A hostile 10 MiB body costs up to a few hundred milliseconds of CPU, so :func:`scan` is a
generator that yields between steps of at most :data:`_STEP` bytes of work; the request path
awaits a checkpoint at each yield (``json_too_deep_yielding`` in
:mod:`continuum.actors.proxy`), and no single body holds the event loop for long.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Final

#: The deepest nesting of arrays and objects a request body may have (the body's own object
#: is level 1). Real requests stay far below it: messages with content parts and tool
#: schemas nest a few dozen levels at most. The same figure as serde_json's default.
MAX_JSON_DEPTH: Final = 128

_TABLE: Final = bytes.maketrans(b"[{]}", b"(())")
#: ``translate`` keeps only the brackets and the quote.
_NOT_MARKS: Final = bytes(b for b in range(256) if b not in b'[]{}"')
_PAIR: Final = b"()"
_OPEN: Final = ord("(")
_RUNS: Final = re.compile(rb"\(+|\)+")
#: Walk the runs once innermost pairs are fewer than 1 in this many bytes (a walk step costs
#: about as much as this many bytes of ``replace``).
_SPARSE: Final = 32
#: Bodies up to this size are counted directly (cheaper than reducing them first).
_SMALL: Final = 4096
#: Bytes of structure per step of a walk (between two yields).
_STEP: Final = 1 << 20


def shallow(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``body`` cannot nest deeper than ``limit`` by its size or its bracket
    count alone: the common case, answered without starting a :func:`scan`."""
    size = len(body)
    return size <= limit or (
        size <= _SMALL and body.count(b"[") + body.count(b"{") <= limit)


def scan(body: bytes, limit: int = MAX_JSON_DEPTH) -> Generator[None, None, bool]:
    """Whether ``body`` nests arrays/objects more than ``limit`` deep (the generator's
    return value); it yields between steps of bounded work.

    Exact for valid JSON. For invalid JSON it may answer True where the nesting is broken
    (``[[[[...`` never closed: a decoder would recurse that deep before noticing), else False
    and the decoder reports the invalid JSON itself.
    """
    if shallow(body, limit):
        return False
    if b'\\"' in body:
        # Escaped quotes do not end strings. Drop escaped backslashes first, then escaped
        # quotes: left to right and in pairs, as a JSON decoder reads them. (Without any
        # backslash-quote there is nothing to drop: every quote opens or closes a string.)
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = body.translate(None, _NOT_MARKS)
    if marks.count(b"[") + marks.count(b"{") <= limit:
        return False
    if len(marks) > _STEP:
        yield
    # Strings are the odd pieces between quotes; the structure is in the even ones.
    structure = b"".join(marks.split(b'"')[::2]).translate(_TABLE)
    del marks
    if structure.count(b"(") <= limit:
        return False
    if b"(" * (limit + 1) in structure:
        return True  # the usual attack: one long run of openings
    passes = 0  # each removes exactly one level (the innermost pairs, everywhere)
    while passes < limit:
        if len(structure) > _STEP:
            yield
        if structure.count(_PAIR) * _SPARSE < len(structure):
            deepest = yield from _walk(structure)
            return passes + deepest > limit
        structure = structure.replace(_PAIR, b"")
        passes += 1
        if _OPEN not in structure:
            return False
    return _OPEN in structure


def _walk(structure: bytes) -> Generator[None, None, int]:
    """The deepest point of ``structure`` (``(``/``)`` only), one Python step per run. A run
    cut by a slice boundary is two runs of the same kind, which adds up the same."""
    depth = deepest = 0
    for start in range(0, len(structure), _STEP):
        if start:
            yield
        for run in _RUNS.findall(structure, start, start + _STEP):
            if run[0] == _OPEN:
                depth += len(run)
                if depth > deepest:
                    deepest = depth
            else:
                depth -= len(run)
                if depth < 0:
                    return deepest  # a decoder stops at the first unmatched bracket
    return deepest


def scan_step(steps: Generator[None, None, bool]) -> bool | None:
    """Run one step of :func:`scan`: its answer when it is done, else None."""
    try:
        next(steps)
    except StopIteration as done:
        return bool(done.value)
    return None


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """:func:`scan` in one go."""
    steps = scan(body, limit)
    while (answer := scan_step(steps)) is None:
        pass
    return answer

