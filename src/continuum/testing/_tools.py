"""Sans-IO decisions the OpenAI mock shares between Chat Completions and the Responses API:
which functions to call, their arguments, structured (JSON) content, and the deterministic
randomness behind all of it.

Determinism: every free choice comes from a ``random.Random`` seeded with a hash of the
request's meaningful fields (messages or input, tools, formats, ``seed``) and the choice's
index, so the same request gets the same answer, streamed or not, and another ``seed`` gets
another one.

The tool-call rule (documented in ``docs/mock.md``):

* ``tool_choice: "none"`` (or no function tools): no call.
* a named function (``{"type": "function", ...}``): that function, once.
* ``"required"``: always call; ``"auto"`` (the default): call, unless the last message is a
  tool result, so a tool loop's second round ends with text.
* which functions: those whose name shares a word with the last user text (``get_weather``
  for "weather in Paris?"), else all of them; with ``parallel_tool_calls`` false only the
  first of those; otherwise up to :data:`MAX_PARALLEL_CALLS` of them, one call each.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from ._schema import Generator, SchemaError, check_schema

MAX_TOOLS: Final = 128
MAX_PARALLEL_CALLS: Final = 4
MAX_CHOICES: Final = 128
MAX_TOP_LOGPROBS: Final = 20
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EMPTY_PARAMETERS: Final[Mapping[str, Any]] = {"type": "object", "properties": {}}
#: Name words too generic to say which tool the user means.
_GENERIC: Final = frozenset({"get", "set", "list", "fetch", "find", "search", "make", "create",
                             "tool", "call", "func", "function", "run", "do", "the", "for",
                             "and", "info", "data", "lookup", "look", "up", "by"})
_encode: Final = msgspec.json.Encoder().encode


class RequestError(Exception):
    """A request the mock answers with a 400 (``param`` names the field when known)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Function:
    """A declared function tool."""

    name: str
    parameters: Mapping[str, Any]
    strict: bool


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``tool_choice`` in either API's spelling: a mode, maybe a forced name, maybe a subset."""

    mode: str = "auto"  # "auto", "none", "required"
    name: str | None = None
    allowed: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call to make: the function, its call id and its JSON arguments."""

    name: str
    call_id: str
    arguments: str


def request_key(fields: Mapping[str, msgspec.Raw], names: Iterable[str]) -> bytes:
    """A digest of the request fields an answer depends on (raw JSON, in a fixed order)."""
    digest = hashlib.blake2b(digest_size=32)
    for name in names:
        raw = fields.get(name)
        digest.update(name.encode() + b"=" + (bytes(raw) if raw is not None else b"-") + b";")
    return digest.digest()


def rng_for(key: bytes, index: int, purpose: str) -> random.Random:
    """The ``random.Random`` of one choice and one purpose (arguments, logprobs, ...)."""
    return random.Random(key + index.to_bytes(4, "little") + purpose.encode())


def ident(key: bytes, index: int, purpose: str, length: int = 24) -> str:
    """A deterministic id fragment (``call_<this>``)."""
    return hashlib.blake2b(key + index.to_bytes(4, "little") + purpose.encode(),
                           digest_size=16).hexdigest()[:length]


def _named(spec: object, where: str) -> tuple[Mapping[str, Any], str]:
    """An object with a valid ``name`` (functions and JSON schemas share OpenAI's rule)."""
    if not isinstance(spec, Mapping):
        raise RequestError(f"Missing required parameter: '{where}'.", where)
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RequestError(f"Invalid '{where}.name': a string of 1 to 64 letters, digits, "
                           "underscores or dashes is required.", f"{where}.name")
    return spec, name


def functions(tools: object, *, nested: bool) -> list[Function]:
    """The function tools of a request, checked (``nested``: Chat's
    ``{"type": "function", "function": {...}}``; else the Responses API's flat spelling).

    Tools of other types (hosted tools, custom tools) are accepted and never called.
    """
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise RequestError("'tools' must be an array.", "tools")
    if len(tools) > MAX_TOOLS:
        raise RequestError(f"Invalid 'tools': array too long. Expected an array with maximum "
                           f"length {MAX_TOOLS}, but got an array with length {len(tools)} "
                           "instead.", "tools")
    found: list[Function] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise RequestError(f"Invalid 'tools[{i}]': expected an object.", f"tools[{i}]")
        if tool.get("type", "function") != "function":
            continue
        where = f"tools[{i}].function" if nested else f"tools[{i}]"
        spec, name = _named(tool.get("function") if nested else tool, where)
        if name in seen:
            raise RequestError(f"Duplicate function name in 'tools': '{name}'.", "tools")
        seen.add(name)
        parameters = spec.get("parameters")
        if parameters is None:
            parameters = _EMPTY_PARAMETERS
        strict = spec.get("strict") is True
        try:
            check_schema(parameters, strict=strict, label=f"function '{name}'", root_object=True)
        except SchemaError as exc:
            raise RequestError(str(exc), f"{where}.parameters") from None
        found.append(Function(name, parameters, strict))
    return found


def tool_choice(value: object, *, nested: bool, declared: Sequence[Function]) -> ToolChoice:
    """``tool_choice`` (``nested``: Chat's spelling), checked against the declared tools."""
    if value is None:
        return ToolChoice("auto")
    choice: ToolChoice | None = None
    if isinstance(value, str):
        if value in ("auto", "none", "required"):
            choice = ToolChoice(value)
    elif isinstance(value, Mapping):
        kind = value.get("type")
        if kind == "function":
            spec = value.get("function") if nested else value
            name = spec.get("name") if isinstance(spec, Mapping) else None
            if isinstance(name, str):
                choice = ToolChoice("required", name=name)
        elif kind == "allowed_tools":
            spec = value.get("allowed_tools") if nested else value
            if isinstance(spec, Mapping) and spec.get("mode") in ("auto", "required"):
                names = []
                for tool in spec.get("tools") or ():
                    inner = tool.get("function") if nested and isinstance(tool, Mapping) else tool
                    if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
                        names.append(inner["name"])
                choice = ToolChoice(str(spec["mode"]), allowed=tuple(names))
        elif isinstance(kind, str):
            choice = ToolChoice("none")  # a hosted tool: the mock has none to run
    if choice is None:
        raise RequestError("Invalid value for 'tool_choice': expected 'none', 'auto', "
                           "'required' or a function to call.", "tool_choice")
    known = {f.name for f in declared}
    if choice.mode != "none" and not declared and value != "auto":
        raise RequestError("Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                           "'tools' are specified.", "tool_choice")
    for wanted in (choice.name, *(choice.allowed or ())):
        if wanted is not None and wanted not in known:
            raise RequestError(f"Invalid value for 'tool_choice': function '{wanted[:64]}' is "
                               "not among the declared tools.", "tool_choice")
    return choice


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _GENERIC}


def _name_words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ")
    return _words(spaced)


def plan_calls(
    declared: Sequence[Function],
    choice: ToolChoice,
    *,
    parallel: bool,
    after_tool_result: bool,
    user_text: str,
) -> list[Function]:
    """The functions to call now, in order (empty: answer with content). See the module doc."""
    if not declared or choice.mode == "none":
        return []
    if choice.name is not None:
        return [f for f in declared if f.name == choice.name]
    if choice.mode == "auto" and after_tool_result:
        return []
    pool = [f for f in declared if choice.allowed is None or f.name in choice.allowed]
    if not pool:
        return []
    said = _words(user_text)
    named = [f for f in pool if _name_words(f.name) & said]
    picked = named or pool
    return picked[:MAX_PARALLEL_CALLS] if parallel else picked[:1]


def make_calls(
    planned: Sequence[Function], key: bytes, index: int, generator: Generator, prefix: str
) -> list[Call]:
    """Ids and generated arguments for the planned calls of choice ``index``."""
    calls = []
    for n, function in enumerate(planned):
        generator.rng = rng_for(key, index * MAX_PARALLEL_CALLS + n, "arguments")
        try:
            arguments = generator.generate(function.parameters)
        except SchemaError as exc:
            raise RequestError(f"Invalid schema for function '{function.name}': {exc}",
                               "tools") from None
        call_id = prefix + ident(key, index * MAX_PARALLEL_CALLS + n, "call")
        calls.append(Call(function.name, call_id, _encode(arguments).decode()))
    return calls


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """How text content is shaped: plain, any JSON object, or JSON fitting a schema."""

    kind: str = "text"  # "text", "json_object", "json_schema"
    name: str = ""
    schema: Mapping[str, Any] | None = None
    strict: bool = False


def output_format(value: object, *, nested: bool, param: str) -> OutputFormat:
    """Chat's ``response_format`` (``nested``: the schema under ``json_schema``) or the
    Responses API's ``text.format``."""
    if value is None:
        return OutputFormat()
    if not isinstance(value, Mapping):
        raise RequestError(f"Invalid '{param}': expected an object.", param)
    kind = value.get("type")
    if kind in ("text", "json_object"):
        return OutputFormat(str(kind))
    if kind != "json_schema":
        raise RequestError(f"Invalid '{param}.type': expected 'text', 'json_object' or "
                           "'json_schema'.", f"{param}.type")
    where = f"{param}.json_schema" if nested else param
    spec, name = _named(value.get("json_schema") if nested else value, where)
    schema = spec.get("schema")
    if schema is None:
        schema = {}
    strict = spec.get("strict") is True
    try:
        check_schema(schema, strict=strict, label=f"{param} '{name}'", root_object=strict)
    except SchemaError as exc:
        raise RequestError(str(exc), f"{where}.schema") from None
    assert isinstance(schema, Mapping)
    return OutputFormat("json_schema", name, schema, strict)


def format_text(fmt: OutputFormat, text: str, generator: Generator) -> str:
    """The content for ``fmt``: ``text`` itself, ``{"reply": text}``, or generated JSON."""
    if fmt.kind == "text":
        return text
    if fmt.kind == "json_object" or fmt.schema is None:
        return _encode({"reply": text}).decode()
    try:
        value = generator.generate(fmt.schema)
    except SchemaError as exc:
        raise RequestError(f"Invalid schema for response format '{fmt.name}': {exc}") from None
    return _encode(value).decode()


def check_count(value: object, param: str, low: int, high: int) -> int:
    """An integer parameter within ``low..high`` (OpenAI's wording when it is not)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"Invalid type for '{param}': expected an integer.", param)
    if value < low:
        raise RequestError(f"Invalid '{param}': integer below minimum value. Expected a value "
                           f">= {low}, but got {value} instead.", param)
    if value > high:
        raise RequestError(f"Invalid '{param}': integer above maximum value. Expected a value "
                           f"<= {high}, but got {value} instead.", param)
    return value


def logprob_entries(
    pieces: Sequence[str], rng: random.Random, top: int
) -> list[dict[str, object]]:
    """Plausible per-token logprobs: the chosen token is the most likely of its
    ``top`` alternatives."""
    entries: list[dict[str, object]] = []
    for piece in pieces:
        chosen = -round(rng.random() * 1.5, 4)
        alternatives: list[dict[str, object]] = [
            {"token": piece, "logprob": chosen, "bytes": list(piece.encode())}
        ]
        variants = [piece.upper(), piece.lower(), piece.strip(), " " + piece.strip(),
                    piece + ".", piece[:1]]
        seen = {piece}
        logprob = chosen
        for variant in variants:
            if len(alternatives) >= top:
                break
            if variant in seen or not variant:
                continue
            seen.add(variant)
            logprob = round(logprob - 0.5 - rng.random() * 2.0, 4)
            alternatives.append({"token": variant, "logprob": logprob,
                                 "bytes": list(variant.encode())})
        n = 0
        while len(alternatives) < top:
            n += 1
            variant = f"{piece}{n}"
            logprob = round(logprob - 0.5 - rng.random() * 2.0, 4)
            alternatives.append({"token": variant, "logprob": logprob,
                                 "bytes": list(variant.encode())})
        entries.append({"token": piece, "logprob": chosen, "bytes": list(piece.encode()),
                        "top_logprobs": alternatives[:top]})
    return entries
