"""Sans-IO JSON Schema support for the mock upstream: check a schema, generate a value.

The OpenAI mock answers ``tools`` with tool calls whose ``arguments`` are generated from each
function's ``parameters``, and ``response_format: json_schema`` with content generated from
the schema. The generated JSON validates against the schema (the subset that clients emit:
pydantic's and the openai SDK's ``$defs``/``$ref``, ``anyOf`` with ``null``, enums, nested
objects and arrays, bounds, formats), so ``.parse()`` with a pydantic model works.

Clients send these schemas, so they are untrusted input: :func:`check_schema` bounds every
walk (nesting, subschemas, enum values) and :class:`Generator` bounds what it produces (a
node budget shared by one request, array lengths, string lengths), and every refusal is a
:class:`SchemaError` whose message becomes a 400. A recursive ``$ref`` is fine as long as
it can end (an optional field, an ``anyOf`` with ``null``, an array that may be empty): past
:data:`SOFT_DEPTH` the generator takes those exits.

Values are a function of the schema and the ``random.Random`` handed in, so the same request
(and seed) gives the same arguments.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

#: Nesting (objects, arrays, combinators, references) beyond which a schema is refused.
MAX_DEPTH: Final = 32
#: Past this depth the generator takes every exit a recursive schema offers.
SOFT_DEPTH: Final = 6
#: Subschemas one :func:`check_schema` walk may visit.
MAX_SCHEMA_NODES: Final = 10_000
#: Enum values across one schema (OpenAI's structured outputs cap them too).
MAX_ENUM_VALUES: Final = 1_000
#: Object properties across one schema.
MAX_PROPERTIES: Final = 5_000
#: The largest ``minItems``/``minProperties``/``minLength`` the generator honours.
MAX_MIN_COUNT: Final = 256
#: Array length when the schema leaves it open.
DEFAULT_ITEMS: Final = 2
#: Values (every scalar, object and array) one request may generate, over all its choices.
DEFAULT_VALUE_BUDGET: Final = 20_000
#: Characters of generated strings one request may hold, over all its choices.
DEFAULT_CHAR_BUDGET: Final = 1_000_000
_MAX_PATTERN: Final = 1_000
_MAX_STRING: Final = 4_096

_TYPES: Final = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_SCHEMA_LISTS: Final = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS: Final = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_ONE: Final = ("items", "additionalProperties", "not", "contains")

#: Plausible strings for common property names (checked lower-case, without separators).
_BY_NAME: Final[dict[str, tuple[str, ...]]] = {
    "location": ("Paris", "Tokyo", "Lima", "Nairobi", "Oslo"),
    "city": ("Paris", "Tokyo", "Lima", "Nairobi", "Oslo"),
    "country": ("France", "Japan", "Peru", "Kenya", "Norway"),
    "name": ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"),
    "firstname": ("Ada", "Alan", "Grace", "Edsger"),
    "lastname": ("Lovelace", "Turing", "Hopper", "Dijkstra"),
    "email": ("ada@example.com", "alan@example.com", "grace@example.com"),
    "query": ("mock search query", "example question"),
    "unit": ("celsius", "fahrenheit"),
    "language": ("English", "French", "Japanese"),
    "color": ("red", "green", "blue"),
    "title": ("A mock title", "An example title"),
    "description": ("A short mock description.", "An example description."),
    "summary": ("A short mock summary.",),
    "url": ("https://example.com/",),
    "timezone": ("Europe/Paris", "Asia/Tokyo", "UTC"),
}
_WORDS: Final = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
_FORMATS: Final[dict[str, tuple[str, ...]]] = {
    "date-time": ("2024-05-17T12:00:00Z", "2024-11-02T08:30:00Z"),
    "date": ("2024-05-17", "2024-11-02"),
    "time": ("12:00:00", "08:30:00"),
    "email": ("ada@example.com", "alan@example.com"),
    "idn-email": ("ada@example.com",),
    "uri": ("https://example.com/", "https://example.org/docs"),
    "url": ("https://example.com/",),
    "uri-reference": ("/docs/example",),
    "iri": ("https://example.com/",),
    "hostname": ("example.com", "api.example.org"),
    "idn-hostname": ("example.com",),
    "ipv4": ("192.0.2.1", "198.51.100.7"),
    "ipv6": ("2001:db8::1",),
    "duration": ("P1D", "PT1H30M"),
}
#: A repeated group that itself holds a quantifier or an alternation: ``(a+)+``, ``(a|aa)*``
#: (catastrophic backtracking; Python's ``re`` has no time limit).
_NESTED_REPEAT: Final = re.compile(r"\((?:[^()]*[|+*{])[^()]*\)\s*[*+{]")
_PATTERN_CANDIDATES: Final = (
    "a", "A", "0", "abc", "ABC", "123", "a1", "A1", "abc123", "ab-12", "ab_12", "a.b",
    "mock", "Mock", "MOCK", "2024-05-17", "12:00", "ada@example.com", "https://example.com/",
    "+15550100", "AB-1234", "#ffffff", "x y",
)


class SchemaError(Exception):
    """A schema the mock refuses (or cannot satisfy); the message is the 400's."""


def _context(path: tuple[str | int, ...]) -> str:
    return "(" + ", ".join(repr(p) for p in path) + ("," if len(path) == 1 else "") + ")"


def resolve_ref(root: Mapping[str, Any], ref: object) -> object:
    """The subschema a local ``$ref`` (``#`` or ``#/a/b``, JSON Pointer) points at."""
    if not isinstance(ref, str):
        raise SchemaError("'$ref' must be a string.")
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        raise SchemaError(f"Only local references ('#/...') are supported, got {ref[:100]!r}.")
    node: object = root
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise SchemaError(f"Reference {ref[:100]!r} can't be resolved.")
    return node


class _Walk:
    """One bounded walk over a schema: shape checks, limits, strict-mode rules."""

    def __init__(self, root: Mapping[str, Any], strict: bool, label: str) -> None:
        self.root = root
        self.strict = strict
        self.label = label
        self.nodes = 0
        self.enums = 0
        self.properties = 0
        self.seen_refs: set[str] = set()

    def fail(self, path: tuple[str | int, ...], message: str) -> SchemaError:
        return SchemaError(f"Invalid schema for {self.label}: In context={_context(path)}, "
                           f"{message}")

    def visit(self, schema: object, path: tuple[str | int, ...], depth: int) -> None:
        if isinstance(schema, bool):
            return
        if not isinstance(schema, Mapping):
            raise self.fail(path, "a schema must be an object or a boolean.")
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise self.fail(path, f"the schema has more than {MAX_SCHEMA_NODES} subschemas.")
        if depth > MAX_DEPTH:
            raise self.fail(path, f"the schema nests more than {MAX_DEPTH} levels deep.")
        self._check_keywords(schema, path)
        ref = schema.get("$ref")
        if ref is not None:
            target = resolve_ref(self.root, ref)
            if ref not in self.seen_refs:  # a recursive reference is walked once
                self.seen_refs.add(ref)
                self.visit(target, (*path, "$ref"), depth + 1)
        for key in _SCHEMA_ONE:
            if key in schema:
                self.visit(schema[key], (*path, key), depth + 1)
        for key in _SCHEMA_LISTS:
            items = schema.get(key)
            if items is None:
                continue
            if not isinstance(items, list) or (key != "prefixItems" and not items):
                raise self.fail(path, f"'{key}' must be a non-empty array of schemas.")
            for i, sub in enumerate(items):
                self.visit(sub, (*path, key, i), depth + 1)
        for key in _SCHEMA_MAPS:
            subs = schema.get(key)
            if subs is None:
                continue
            if not isinstance(subs, Mapping):
                raise self.fail(path, f"'{key}' must be an object of schemas.")
            if key == "properties":
                self.properties += len(subs)
                if self.properties > MAX_PROPERTIES:
                    raise self.fail(path, f"the schema has more than {MAX_PROPERTIES} "
                                    "properties.")
            for name, sub in subs.items():
                self.visit(sub, (*path, key, str(name)), depth + 1)
        if self.strict and _is_object(schema):
            self._check_strict_object(schema, path)

    def _check_keywords(self, schema: Mapping[str, Any], path: tuple[str | int, ...]) -> None:
        kind = schema.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        if not all(isinstance(k, str) and k in _TYPES for k in kinds) or (
            isinstance(kind, list) and not kind
        ):
            raise self.fail(path, f"'type' must be one of {sorted(_TYPES)} or a list of them.")
        enum = schema.get("enum")
        if enum is not None:
            if not isinstance(enum, list) or not enum:
                raise self.fail(path, "'enum' must be a non-empty array.")
            self.enums += len(enum)
            if self.enums > MAX_ENUM_VALUES:
                raise self.fail(path, f"the schema has more than {MAX_ENUM_VALUES} enum values.")
        required = schema.get("required")
        if required is not None and (
            not isinstance(required, list) or not all(isinstance(r, str) for r in required)
        ):
            raise self.fail(path, "'required' must be an array of strings.")
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            value = schema.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise self.fail(path, f"'{key}' must be a number.")
        for key in ("minItems", "maxItems", "minLength", "maxLength", "minProperties",
                    "maxProperties"):
            value = schema.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise self.fail(path, f"'{key}' must be a non-negative integer.")
        pattern = schema.get("pattern")
        if pattern is not None:
            if not isinstance(pattern, str) or len(pattern) > _MAX_PATTERN:
                raise self.fail(path, f"'pattern' must be a string of at most {_MAX_PATTERN} "
                                "characters.")
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError):
                raise self.fail(path, f"'pattern' {pattern[:100]!r} is not a valid regular "
                                "expression.") from None
            if _NESTED_REPEAT.search(pattern):
                raise self.fail(path, f"'pattern' {pattern[:100]!r} repeats a group that "
                                "itself repeats or alternates, which the mock refuses (it "
                                "could take exponential time to match).")

    def _check_strict_object(
        self, schema: Mapping[str, Any], path: tuple[str | int, ...]
    ) -> None:
        if schema.get("additionalProperties") is not False:
            raise self.fail(path, "'additionalProperties' is required to be supplied and to "
                            "be false.")
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        missing = [name for name in properties if name not in required]
        if missing:
            raise self.fail(path, "'required' is required to be supplied and to be an array "
                            f"including every key in properties. Missing '{missing[0]}'.")


def _is_object(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or (
        kind is None and "properties" in schema
    )


def check_schema(schema: object, *, strict: bool, label: str, root_object: bool = False) -> None:
    """Raise :class:`SchemaError` unless the mock can work with ``schema``.

    ``label`` names it in messages (``"response_format 'Answer'"``, ``"function 'f'"``);
    ``strict`` adds OpenAI's structured-output rules (every object closed with
    ``additionalProperties: false`` and listing every property in ``required``);
    ``root_object`` requires the top level to be an object schema.
    """
    if not isinstance(schema, Mapping):
        raise SchemaError(f"Invalid schema for {label}: a schema must be a JSON object.")
    walk = _Walk(schema, strict, label)
    if (root_object or strict) and not _is_object(schema) and "$ref" not in schema:
        raise walk.fail((), "schema must be a JSON Schema of 'type: \"object\"'.")
    walk.visit(schema, (), 0)


class Generator:
    """Makes values that validate against schemas of one request.

    ``rng`` decides every free choice; ``budget`` and ``chars`` (shared by every value of
    the request) bound the number of values and the characters of strings produced.
    """

    def __init__(self, rng: random.Random, budget: int = DEFAULT_VALUE_BUDGET,
                 chars: int = DEFAULT_CHAR_BUDGET) -> None:
        self.rng = rng
        self.budget = budget
        self.chars = chars

    def generate(self, schema: Mapping[str, Any], name: str = "") -> object:
        """A value for ``schema`` (which :func:`check_schema` has accepted)."""
        return self._value(schema, schema, name, 0)

    def _spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise SchemaError("The schema asks for more values than the mock generates for one "
                              "request; reduce minItems/minProperties or n.")

    def _value(self, root: Mapping[str, Any], schema: object, name: str, depth: int) -> object:
        if schema is True:
            schema = {}
        if not isinstance(schema, Mapping):
            raise SchemaError(f"Schema at '{name or '#'}' can never be satisfied (false).")
        if depth > MAX_DEPTH:
            raise SchemaError("The schema is recursive without a way to end (no optional "
                              "field, nullable branch or empty array to stop at).")
        self._spend()
        schema = self._flatten(root, schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self.rng.randrange(len(enum))]
        options = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(options, list) and options:
            return self._value(root, self._pick(root, options, depth), name, depth + 1)
        kind = self._type(schema, depth)
        if kind == "object":
            return self._object(root, schema, depth)
        if kind == "array":
            return self._array(root, schema, name, depth)
        if kind == "string":
            return self._string(schema, name)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        return None

    def _flatten(self, root: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """Follow ``$ref`` and merge ``allOf`` into one schema (siblings win, as pydantic's
        ``{"$ref": ..., "description": ...}`` expects)."""
        hops = 0
        while "$ref" in schema or "allOf" in schema:
            hops += 1
            if hops > MAX_DEPTH:
                raise SchemaError("The schema's references go round in a circle.")
            merged: dict[str, Any] = {}
            if "$ref" in schema:
                target = resolve_ref(root, schema["$ref"])
                if target is False:
                    raise SchemaError("A referenced schema can never be satisfied (false).")
                if isinstance(target, Mapping):
                    merged.update(target)
            for part in schema.get("allOf") or ():
                if part is False:
                    raise SchemaError("An allOf branch can never be satisfied (false).")
                if isinstance(part, Mapping):
                    part = self._flatten(root, part)
                    _merge_into(merged, part)
            merged.update({k: v for k, v in schema.items() if k not in ("$ref", "allOf")})
            schema = merged
        return schema

    def _pick(self, root: Mapping[str, Any], options: list[Any], depth: int) -> object:
        """A branch of ``anyOf``/``oneOf``: not ``null`` when there is a choice, and past
        :data:`SOFT_DEPTH` the branch that ends soonest."""
        flat = [self._flatten(root, o) if isinstance(o, Mapping) else o for o in options]
        if depth >= SOFT_DEPTH:
            for option in flat:
                if isinstance(option, Mapping) and option.get("type") == "null":
                    return option
            for option in flat:
                if isinstance(option, Mapping) and not _is_object(option) and (
                    option.get("type") != "array"
                ):
                    return option
        useful = [o for o in flat if not (isinstance(o, Mapping) and o.get("type") == "null")]
        pool = useful or flat
        return pool[self.rng.randrange(len(pool))]

    def _type(self, schema: Mapping[str, Any], depth: int) -> str:
        kind = schema.get("type")
        if isinstance(kind, str):
            return kind
        if isinstance(kind, list) and kind:
            if depth >= SOFT_DEPTH and "null" in kind:
                return "null"
            useful = [k for k in kind if k != "null"] or kind
            return str(useful[self.rng.randrange(len(useful))])
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def _object(self, root: Mapping[str, Any], schema: Mapping[str, Any], depth: int) -> object:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out: dict[str, object] = {}
        for key, sub in properties.items():
            if key in required or depth < SOFT_DEPTH:
                out[key] = self._value(root, sub, key, depth + 1)
        extra = schema.get("additionalProperties", True)
        wanted = int(schema.get("minProperties") or 0)
        if not properties and extra is not False and isinstance(extra, Mapping) and (
            depth < SOFT_DEPTH
        ):
            wanted = max(wanted, 1)
        if wanted > MAX_MIN_COUNT:
            raise SchemaError(f"'minProperties' above {MAX_MIN_COUNT} is not supported by the "
                              "mock.")
        if len(out) < wanted:
            if extra is False:
                raise SchemaError("'minProperties' can't be met without additional properties.")
            sub = extra if isinstance(extra, Mapping) else {"type": "string"}
            index = 1
            while len(out) < wanted:
                key = f"key_{index}"
                index += 1
                if key not in out:
                    out[key] = self._value(root, sub, key, depth + 1)
        return out

    def _array(
        self, root: Mapping[str, Any], schema: Mapping[str, Any], name: str, depth: int
    ) -> object:
        low, high = _length_bounds(schema, "Items", MAX_MIN_COUNT)
        count = low if depth >= SOFT_DEPTH else max(low, DEFAULT_ITEMS)
        if high is not None:
            count = min(count, int(high))
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        if items is False:
            count = min(count, len(prefix)) if low <= len(prefix) else count
        count = max(count, min(len(prefix), int(high) if high is not None else len(prefix)))
        out: list[object] = []
        seen: set[str] = set()
        unique = bool(schema.get("uniqueItems"))
        tries = 0
        while len(out) < count:
            tries += 1
            if tries > 8 * count + 8:
                raise SchemaError("Can't generate enough distinct items for 'uniqueItems'.")
            i = len(out)
            sub = prefix[i] if i < len(prefix) else items
            if sub is False:
                raise SchemaError("'minItems' can't be met: no more items are allowed.")
            value = self._value(root, sub, name, depth + 1)
            if unique:
                key = repr(value)
                if key in seen:
                    continue
                seen.add(key)
            out.append(value)
        return out

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        fmt = schema.get("format")
        choices = _FORMATS.get(fmt) if isinstance(fmt, str) else None
        if fmt == "uuid":
            text = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        elif choices:
            text = choices[self.rng.randrange(len(choices))]
        else:
            name = name[:40]
            key = re.sub(r"[^a-z]", "", name.lower())
            by_name = _BY_NAME.get(key)
            if by_name is None and key.endswith(("city", "location")):
                by_name = _BY_NAME["city"]
            if by_name is not None:
                text = by_name[self.rng.randrange(len(by_name))]
            else:
                word = _WORDS[self.rng.randrange(len(_WORDS))]
                text = f"mock {name.replace('_', ' ')} {word}" if name else f"mock {word}"
        low, high = _length_bounds(schema, "Length", _MAX_STRING)
        self.chars -= max(low, len(text))
        if self.chars < 0:
            raise SchemaError("The schema asks for longer strings than the mock generates for "
                              "one request; reduce minLength or n.")
        text = _fit(text, low, high)
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and not re.search(pattern, text):
            for candidate in _PATTERN_CANDIDATES:
                fitted = _fit(candidate, low, high)
                if re.search(pattern, fitted):
                    return fitted
            raise SchemaError(f"The mock can't generate a string matching pattern "
                              f"{pattern[:100]!r}.")
        return text

    def _bounds(self, schema: Mapping[str, Any], default_low: float, span: float
                ) -> tuple[float, float, bool, bool]:
        """(low, high, low is exclusive, high is exclusive), defaults filled in."""
        low, high = _number_or_none(schema.get("minimum")), _number_or_none(schema.get("maximum"))
        xlow = _number_or_none(schema.get("exclusiveMinimum"))
        xhigh = _number_or_none(schema.get("exclusiveMaximum"))
        open_low = open_high = False
        if xlow is not None and (low is None or xlow >= low):
            low, open_low = xlow, True
        if xhigh is not None and (high is None or xhigh <= high):
            high, open_high = xhigh, True
        if low is None:
            low = default_low if high is None else min(default_low, high - span)
        if high is None:
            high = low + span
        if high < low:
            raise SchemaError("'maximum' is below 'minimum'.")
        return low, high, open_low, open_high

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low, high, open_low, open_high = self._bounds(schema, 1, 99)
        first = int(-(-low // 1)) + (1 if open_low and low == int(low) else 0)
        last = int(high // 1) - (1 if open_high and high == int(high) else 0)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first = -(-first // step) * step
            last = (last // step) * step
            if last < first:
                raise SchemaError("No integer fits the bounds and 'multipleOf'.")
            return first + step * self.rng.randrange((last - first) // step + 1)
        if last < first:
            raise SchemaError("No integer fits between the bounds.")
        return first + self.rng.randrange(min(last - first, 10**12) + 1)

    def _number(self, schema: Mapping[str, Any]) -> float:
        low, high, open_low, open_high = self._bounds(schema, 0.0, 100.0)
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            first, last = -(-low // step), high // step
            if open_low and first * step == low:
                first += 1
            if open_high and last * step == high:
                last -= 1
            if last < first:
                raise SchemaError("No number fits the bounds and 'multipleOf'.")
            k = first + self.rng.randrange(int(min(last - first, 10**12)) + 1)
            return float(k * step)
        value = round(low + (high - low) * (0.1 + 0.8 * self.rng.random()), 2)
        if low < value < high or (value == low and not open_low) or (
            value == high and not open_high
        ):
            return value
        middle = (low + high) / 2  # a narrow range that rounding stepped out of
        if low < middle < high or not (open_low or open_high):
            return middle
        raise SchemaError("No number fits between the bounds.")


def _length_bounds(schema: Mapping[str, Any], what: str, cap: int) -> tuple[int, int | None]:
    """``min<what>``/``max<what>`` (``Items``, ``Length``), checked and bounded by ``cap``."""
    low = int(schema.get(f"min{what}") or 0)
    high = schema.get(f"max{what}")
    if low > cap:
        raise SchemaError(f"'min{what}' above {cap} is not supported by the mock.")
    if high is not None and high < low:
        raise SchemaError(f"'max{what}' is below 'min{what}'.")
    return low, high


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _fit(text: str, low: int, high: object) -> str:
    if len(text) < low:
        text += "x" * (low - len(text))
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def _merge_into(merged: dict[str, Any], part: Mapping[str, Any]) -> None:
    """``allOf`` as one schema: properties and required lists combine, the rest overrides."""
    for key, value in part.items():
        if key == "properties" and isinstance(value, Mapping):
            merged["properties"] = {**merged.get("properties", {}), **value}
        elif key == "required" and isinstance(value, list):
            merged["required"] = [*merged.get("required", []), *value]
        else:
            merged[key] = value
