"""OpenAI Chat Completions ↔ Gemini native API (``generateContent`` / ``streamGenerateContent``).

Sans-IO: every function takes and returns bytes (or the shared ``_types`` shapes); the
BackendActor does the I/O. Four pieces:

* :func:`openai_to_gemini_request` — an OpenAI ``/v1/chat/completions`` body → an
  :class:`UpstreamCall` to ``/v1beta/models/{model}:generateContent`` (or
  ``:streamGenerateContent?alt=sse``), authenticated with ``x-goog-api-key``.
* :func:`gemini_to_openai_response` — a ``GenerateContentResponse`` (or a Gemini error body)
  → an OpenAI ``chat.completion`` (or OpenAI-shaped error), keeping the HTTP status.
* :class:`GeminiToOpenAIStream` — Gemini SSE → OpenAI ``chat.completion.chunk`` SSE,
  incrementally (events may be split at any byte).
* :func:`gemini_models` — a ``models.list`` answer → the model ids that can generate content.

For Gemini's own OpenAI-compatible endpoint (pass-through mode) there are
:func:`openai_compat_path` and :func:`openai_compat_headers`.

Mapping decisions (request)
---------------------------
* ``system``/``developer`` messages (wherever they appear) → ``systemInstruction.parts``, one
  text part per text content part, in order. Gemini has no mid-conversation system turn.
* ``user`` → role ``user``; ``assistant`` → role ``model``; ``tool`` (and legacy ``function``)
  → ``functionResponse`` parts in a ``user`` turn. Consecutive turns of the same role are
  merged, so parallel tool results land in one turn as Gemini requires. Empty text is dropped;
  a conversation with no user/assistant content cannot be expressed (TranslationError).
* ``image_url`` ``data:`` URLs → ``inlineData``; ``http(s)`` URLs → ``fileData`` with the MIME
  type guessed from the extension (default ``image/jpeg``); ``input_audio`` → ``inlineData``
  (``audio/<format>``); ``file`` parts with ``file_data`` (a data URL) → ``inlineData``.
* Assistant ``tool_calls`` → ``functionCall {name, args}`` parts (``arguments`` must be a JSON
  object or empty). A Gemini thought signature travels through OpenAI as
  ``tool_calls[].extra_content.google.thought_signature`` (the same place Gemini's own
  OpenAI-compatible endpoint uses) and is put back as the part's ``thoughtSignature``; when the
  first call of a turn has none (a history not produced by Gemini), Google's documented
  placeholder ``skip_thought_signature_validator`` is sent so Gemini 3 accepts the history.
* ``tool`` messages → ``functionResponse {name, response}``; the name comes from the earlier
  tool call with the same id (or the message's ``name``). A JSON-object result is the
  response itself; any other JSON value or plain text is wrapped as ``{"content": ...}``.
* ``tools`` → one ``{functionDeclarations: [...]}``. JSON Schemas are reduced to the OpenAPI
  subset Gemini accepts: a whitelist of keywords (``additionalProperties``, ``$schema``,
  ``strict``, ``$id``, ``examples``… are dropped), local ``$ref``\\s into ``$defs`` /
  ``definitions`` inlined (recursive ones are a TranslationError), ``oneOf`` → ``anyOf``,
  ``const`` → ``enum``, ``["T", "null"]`` types and ``anyOf [T, {type: null}]`` →
  ``nullable``. A parameter-less object schema is omitted.
* ``tool_choice``: ``auto``→AUTO, ``none``→NONE, ``required``→ANY, a named function →
  ANY + ``allowedFunctionNames``.
* ``generationConfig``: ``temperature``, ``top_p``→``topP``, ``max_completion_tokens`` (else
  ``max_tokens``)→``maxOutputTokens``, ``stop``→``stopSequences``, ``n``→``candidateCount``,
  ``presence_penalty``/``frequency_penalty``/``seed``, ``logprobs``→``responseLogprobs``,
  ``top_logprobs``→``logprobs``; ``response_format`` ``json_object`` → ``responseMimeType:
  application/json``, ``json_schema`` → the same plus ``responseSchema`` (reduced as above).
* ``reasoning_effort`` → ``generationConfig.thinkingConfig.thinkingBudget`` per
  :data:`REASONING_BUDGETS` (none 0, minimal 512, low 1024, medium 8192, high 24576). The
  client's own provider field wins over it: ``google.thinking_config`` (how the OpenAI SDK's
  ``extra_body={"google": {...}}`` arrives — also accepted nested under a literal
  ``extra_body``), a top-level ``thinking_config``/``thinkingConfig``, or
  ``generationConfig.thinkingConfig``. snake_case keys are converted to camelCase. A
  client-sent ``generationConfig`` object is merged over the translated one, and
  ``google.cached_content``/``safety_settings`` (or top-level ``safetySettings`` /
  ``cachedContent``) are forwarded.
* Fields with no Gemini equivalent (``user``, ``metadata``, ``logit_bias``,
  ``parallel_tool_calls``, ``stream_options``…) are ignored; the body's ``model`` is replaced
  by the ``model`` argument.

Mapping decisions (response)
----------------------------
* Each candidate → a choice (``index`` from the candidate). Text parts are joined into
  ``content`` (``null`` when there is none); ``thought: true`` parts (thought summaries) go to
  the non-standard ``reasoning_content``; ``functionCall`` parts → ``tool_calls`` with
  ``arguments`` as a JSON string and the id ``functionCall.id`` when Gemini sent one, else
  ``call_<responseId>_<n>`` (random hex when there is no ``responseId``).
* ``finishReason``: STOP→``stop`` (``tool_calls`` when the choice has calls), MAX_TOKENS→
  ``length``, SAFETY/RECITATION/BLOCKLIST/PROHIBITED_CONTENT/SPII/IMAGE_SAFETY→
  ``content_filter``, anything else→``stop``. A prompt blocked before generation
  (``promptFeedback.blockReason``, no candidates) is one empty ``content_filter`` choice.
* ``usage``: ``prompt_tokens`` = promptTokenCount; ``completion_tokens`` =
  candidatesTokenCount + thoughtsTokenCount (OpenAI counts reasoning inside completion tokens,
  Gemini does not); ``total_tokens`` = totalTokenCount;
  ``completion_tokens_details.reasoning_tokens`` = thoughtsTokenCount;
  ``prompt_tokens_details.cached_tokens`` = cachedContentTokenCount.
* Errors ``{"error": {"code", "message", "status"}}`` keep the HTTP status and map ``status``
  to the OpenAI ``type``/``code`` in :data:`_ERROR_KINDS`; an invalid API key (Gemini answers
  400 with reason ``API_KEY_INVALID``) becomes ``authentication_error``/``invalid_api_key``;
  ``RetryInfo.retryDelay`` becomes a ``retry-after`` header.
"""

from __future__ import annotations

import base64
import mimetypes
import secrets
import time
import urllib.parse
from typing import Any, Final

import msgspec

from ..core.errors import openai_error_body
from .types import Headers, Translated, TranslationError, UpstreamCall

__all__ = [
    "REASONING_BUDGETS",
    "GeminiToOpenAIStream",
    "gemini_auth_headers",
    "gemini_models",
    "gemini_models_call",
    "gemini_to_openai_response",
    "openai_compat_headers",
    "openai_compat_path",
    "openai_to_gemini_request",
]

_decode = msgspec.json.decode
_encode = msgspec.json.encode

#: OpenAI ``reasoning_effort`` → Gemini ``thinkingConfig.thinkingBudget`` (tokens).
REASONING_BUDGETS: Final[dict[str, int]] = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
}

#: Google's documented placeholder for a function call whose thought signature is unknown.
SKIP_SIGNATURE: Final = "skip_thought_signature_validator"

_JSON: Final = b"application/json"

# ---------------------------------------------------------------------------------------------
# Request: OpenAI chat → Gemini generateContent
# ---------------------------------------------------------------------------------------------


def gemini_auth_headers(api_key: str | None) -> Headers:
    """Headers every native Gemini call carries."""
    headers: Headers = [(b"content-type", _JSON)]
    if api_key:
        headers.append((b"x-goog-api-key", api_key.encode()))
    return headers


def _model_path(model: str) -> str:
    if not model:
        raise TranslationError("model must not be empty", "model")
    name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    return urllib.parse.quote(name, safe="/-._~")


def openai_to_gemini_request(
    body: bytes, *, model: str, api_key: str | None, stream: bool
) -> UpstreamCall:
    """Translate an OpenAI ``/v1/chat/completions`` body into a Gemini call."""
    try:
        req = _decode(body)
    except msgspec.DecodeError as exc:
        raise TranslationError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise TranslationError("request body must be a JSON object")

    out: dict[str, Any] = {}
    system_parts, contents = _messages(req.get("messages"))
    if not contents:
        raise TranslationError(
            "messages must contain at least one non-empty user or assistant message", "messages"
        )
    out["contents"] = contents
    if system_parts:
        out["systemInstruction"] = {"parts": system_parts}

    tools = req.get("tools")
    if tools is not None:
        declarations = _tools(tools)
        if declarations:
            out["tools"] = [{"functionDeclarations": declarations}]
    tool_choice = req.get("tool_choice")
    if tool_choice is not None:
        out["toolConfig"] = {"functionCallingConfig": _tool_choice(tool_choice)}

    google = _google_extra(req)
    config = _generation_config(req, google)
    if config:
        out["generationConfig"] = config

    safety = _first(google, "safety_settings", "safetySettings")
    if safety is None:
        safety = _first(req, "safetySettings", "safety_settings")
    if safety is not None:
        out["safetySettings"] = safety
    cached = _first(google, "cached_content", "cachedContent")
    if cached is None:
        cached = req.get("cachedContent")
    if cached is not None:
        out["cachedContent"] = cached

    path = f"/v1beta/{_model_path(model)}:"
    path += "streamGenerateContent?alt=sse" if stream else "generateContent"
    return UpstreamCall(b"POST", path.encode(), gemini_auth_headers(api_key), _encode(out))


def _first(obj: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in obj and obj[key] is not None:
            return obj[key]
    return None


def _google_extra(req: dict[str, Any]) -> dict[str, Any]:
    """The client's Gemini-specific extras (``extra_body={"google": {...}}``)."""
    google = req.get("google")
    if google is None:
        extra = req.get("extra_body")
        if isinstance(extra, dict):
            google = extra.get("google")
    if google is None:
        return {}
    if not isinstance(google, dict):
        raise TranslationError("google must be an object", "google")
    return google


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _camel_keys(obj: Any, param: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise TranslationError(f"{param} must be an object", param)
    return {_camel(k): v for k, v in obj.items()}


def _number(req: dict[str, Any], key: str) -> Any:
    value = req.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise TranslationError(f"{key} must be a number", key)
    return value


def _integer(req: dict[str, Any], key: str) -> Any:
    value = req.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TranslationError(f"{key} must be an integer", key)
    return value


def _generation_config(req: dict[str, Any], google: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = _number(req, src)
        if value is not None:
            config[dst] = value
    max_tokens = _integer(req, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _integer(req, "max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    for src, dst in (("n", "candidateCount"), ("seed", "seed"), ("top_logprobs", "logprobs")):
        value = _integer(req, src)
        if value is not None:
            config[dst] = value
    if req.get("logprobs") is True:
        config["responseLogprobs"] = True

    stop = req.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            config["stopSequences"] = list(stop)
    elif stop is not None:
        raise TranslationError("stop must be a string or a list of strings", "stop")

    response_format = req.get("response_format")
    if response_format is not None:
        config.update(_response_format(response_format))

    effort = req.get("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_BUDGETS:
            raise TranslationError(
                f"reasoning_effort must be one of {', '.join(REASONING_BUDGETS)}",
                "reasoning_effort",
            )
        config["thinkingConfig"] = {"thinkingBudget": REASONING_BUDGETS[effort]}

    # The client's own provider fields win over anything translated above.
    own_thinking = _first(google, "thinking_config", "thinkingConfig")
    if own_thinking is None:
        own_thinking = _first(req, "thinking_config", "thinkingConfig")
    if own_thinking is not None:
        config["thinkingConfig"] = _camel_keys(own_thinking, "thinking_config")
    own_config = req.get("generationConfig")
    if own_config is not None:
        config.update(_camel_keys(own_config, "generationConfig"))
    return config


def _response_format(fmt: Any) -> dict[str, Any]:
    if not isinstance(fmt, dict):
        raise TranslationError("response_format must be an object", "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise TranslationError(
                "response_format.json_schema must be an object", "response_format"
            )
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        schema = spec.get("schema")
        if schema is not None:
            out["responseSchema"] = _schema(schema, "response_format.json_schema.schema")
        return out
    raise TranslationError(f"unsupported response_format type {kind!r}", "response_format")


# --- messages -------------------------------------------------------------------------------


def _messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty array", "messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise TranslationError(f"{param} must be an object", param)
        role = msg.get("role")
        content = msg.get("content")
        if role in ("system", "developer"):
            system.extend(_text_parts(content, param, allow_refusal=False))
        elif role == "user":
            add("user", _user_parts(content, param))
        elif role == "assistant":
            parts = _text_parts(content, param, allow_refusal=True)
            parts.extend(_call_parts(msg, param, call_names))
            add("model", parts)
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            name = call_names.get(call_id) if isinstance(call_id, str) else None
            if name is None:
                name = msg.get("name")
            if not isinstance(name, str) or not name:
                raise TranslationError(
                    f"{param}.tool_call_id does not match any earlier assistant tool call",
                    f"{param}.tool_call_id",
                )
            add("user", [_function_response(name, content, param)])
        elif role == "function":
            name = msg.get("name")
            if not isinstance(name, str) or not name:
                raise TranslationError(f"{param}.name is required", f"{param}.name")
            add("user", [_function_response(name, content, param)])
        else:
            raise TranslationError(f"{param}.role {role!r} is not supported", f"{param}.role")
    return system, contents


def _text_parts(content: Any, param: str, *, allow_refusal: bool) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"{param}.content must be a string or an array", param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" or (allow_refusal and kind == "refusal"):
            text = part.get("text" if kind == "text" else "refusal")
            if not isinstance(text, str):
                raise TranslationError(f"{param}.content[{j}].{kind} must be a string", param)
            if text:
                parts.append({"text": text})
        else:
            raise TranslationError(
                f"{param}.content[{j}]: content part type {kind!r} is not supported here",
                f"{param}.content",
            )
    return parts


def _parse_data_url(url: str, param: str) -> dict[str, Any]:
    header, sep, data = url[5:].partition(",")
    if not sep:
        raise TranslationError(f"{param}: malformed data URL", param)
    fields = header.split(";")
    mime = fields[0] or "text/plain"
    if "base64" not in fields[1:]:
        data = base64.b64encode(urllib.parse.unquote_to_bytes(data)).decode()
    return {"inlineData": {"mimeType": mime, "data": data}}


def _image_part(url: Any, param: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{param}.image_url.url must be a string", param)
    if url.startswith("data:"):
        return _parse_data_url(url, param)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "gs"):
        raise TranslationError(f"{param}: unsupported image URL scheme {scheme!r}", param)
    mime, _ = mimetypes.guess_type(urllib.parse.urlsplit(url).path)
    return {"fileData": {"mimeType": mime or "image/jpeg", "fileUri": url}}


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text_parts(content, param, allow_refusal=False)
    if not isinstance(content, list):
        raise TranslationError(f"{param}.content must be a string or an array", param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        p = f"{param}.content[{j}]"
        if not isinstance(part, dict):
            raise TranslationError(f"{p} must be an object", p)
        kind = part.get("type")
        if kind == "text":
            parts.extend(_text_parts([part], param, allow_refusal=False))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_image_part(url, p))
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise TranslationError(f"{p}.input_audio.data must be a string", p)
            fmt = audio.get("format") or "wav"
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str) or not data.startswith("data:"):
                raise TranslationError(f"{p}: only inline file_data (a data: URL) is supported", p)
            parts.append(_parse_data_url(data, p))
        else:
            raise TranslationError(f"{p}: content part type {kind!r} is not supported", p)
    return parts


def _call_parts(
    msg: dict[str, Any], param: str, call_names: dict[str, str]
) -> list[dict[str, Any]]:
    calls = msg.get("tool_calls")
    legacy = msg.get("function_call")
    if calls is None and isinstance(legacy, dict):
        calls = [{"id": None, "type": "function", "function": legacy}]
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise TranslationError(f"{param}.tool_calls must be an array", f"{param}.tool_calls")
    parts: list[dict[str, Any]] = []
    for k, call in enumerate(calls):
        p = f"{param}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise TranslationError(f"{p}.function.name must be a string", p)
        name: str = fn["name"]
        raw = fn.get("arguments")
        if raw is None or raw == "":
            args: Any = {}
        elif isinstance(raw, dict):
            args = raw
        elif isinstance(raw, str):
            try:
                args = _decode(raw)
            except msgspec.DecodeError:
                raise TranslationError(
                    f"{p}.function.arguments is not valid JSON", f"{p}.function.arguments"
                ) from None
        else:
            args = None
        if not isinstance(args, dict):
            raise TranslationError(
                f"{p}.function.arguments must be a JSON object", f"{p}.function.arguments"
            )
        call_id = call.get("id") if isinstance(call, dict) else None
        if isinstance(call_id, str):
            call_names[call_id] = name
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        signature = _signature(call)
        if signature is None and k == 0:
            signature = SKIP_SIGNATURE
        if signature is not None:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _signature(call: Any) -> str | None:
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _function_response(name: str, content: Any, param: str) -> dict[str, Any]:
    if isinstance(content, list):
        content = "".join(p["text"] for p in _text_parts(content, param, allow_refusal=False))
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise TranslationError(f"{param}.content must be a string or an array", param)
    try:
        value: Any = _decode(content)
    except msgspec.DecodeError:
        value = content
    response = value if isinstance(value, dict) else {"content": value}
    return {"functionResponse": {"name": name, "response": response}}


# --- tools and schemas ------------------------------------------------------------------------


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("tools must be an array", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise TranslationError(f"{p}: only function tools are supported", p)
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise TranslationError(f"{p}.function.name must be a string", p)
        decl: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if params is not None:
            schema = _schema(params, f"{p}.function.parameters")
            if schema.get("properties") or schema.get("type", "object") != "object":
                decl["parameters"] = schema
        out.append(decl)
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    if isinstance(choice, str) and choice in modes:
        return {"mode": modes[choice]}
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str):
            return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise TranslationError(
        "tool_choice must be auto, none, required or a named function", "tool_choice"
    )


#: The keywords of Gemini's Schema object (an OpenAPI 3.0 subset); everything else is dropped.
_SCHEMA_KEYS: Final = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)


def _schema(schema: Any, param: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise TranslationError(f"{param} must be a JSON Schema object", param)
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _clean(schema, defs, frozenset(), param)


def _is_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" and len(schema) == 1


def _clean(schema: Any, defs: dict[str, Any], seen: frozenset[str], param: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise TranslationError(f"{param}: a schema must be an object", param)
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
            raise TranslationError(f"{param}: unresolvable $ref {ref!r}", param)
        if name in seen:
            raise TranslationError(f"{param}: recursive $ref {ref!r} is not supported", param)
        merged = {**defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return _clean(merged, defs, seen | {name}, param)

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {n: _clean(s, defs, seen, param) for n, s in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = _clean(value, defs, seen, param)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            options = [_clean(s, defs, seen, param) for s in value]
            if any(_is_null(o) for o in options):
                out["nullable"] = True
                options = [o for o in options if not _is_null(o)]
            if len(options) == 1:
                out.update(options[0])
            elif options:
                out["anyOf"] = options
        elif key == "allOf" and isinstance(value, list):
            for sub in value:
                out.update(_clean(sub, defs, seen, param))
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            if len(types) < len(value):
                out["nullable"] = True
            if len(types) == 1:
                out["type"] = types[0]
            elif types:
                out["anyOf"] = [{"type": t} for t in types]
        elif key == "const":
            out["enum"] = [value]
        elif key in _SCHEMA_KEYS:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Response: Gemini → OpenAI chat
# ---------------------------------------------------------------------------------------------

_FINISH: Final[dict[str, str]] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def _finish_reason(reason: Any, has_calls: bool) -> str:
    mapped = _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if mapped == "stop" and has_calls else mapped


#: Gemini ``error.status`` → (OpenAI ``type``, ``code``, HTTP status when the answer had none).
_ERROR_KINDS: Final[dict[str, tuple[str, str | None, int]]] = {
    "INVALID_ARGUMENT": ("invalid_request_error", "invalid_argument", 400),
    "FAILED_PRECONDITION": ("invalid_request_error", "failed_precondition", 400),
    "OUT_OF_RANGE": ("invalid_request_error", "out_of_range", 400),
    "UNAUTHENTICATED": ("authentication_error", "invalid_api_key", 401),
    "PERMISSION_DENIED": ("permission_error", "permission_denied", 403),
    "NOT_FOUND": ("invalid_request_error", "not_found", 404),
    "RESOURCE_EXHAUSTED": ("rate_limit_error", "rate_limit_exceeded", 429),
    "CANCELLED": ("server_error", "cancelled", 499),
    "INTERNAL": ("server_error", "internal_error", 500),
    "UNAVAILABLE": ("service_unavailable", "unavailable", 503),
    "DEADLINE_EXCEEDED": ("timeout_error", "upstream_timeout", 504),
}


def _error_fields(status: int, err: Any) -> tuple[int, dict[str, Any], Headers]:
    """A Gemini ``error`` object → (HTTP status, OpenAI ``error`` object, extra headers)."""
    err = err if isinstance(err, dict) else {}
    grpc = err.get("status") if isinstance(err.get("status"), str) else None
    kind = _ERROR_KINDS.get(grpc) if grpc else None
    if status < 400:
        code_num = err.get("code")
        status = (
            code_num
            if isinstance(code_num, int) and code_num >= 400
            else (kind[2] if kind else 502)
        )
    if kind is None:
        kind = (
            ("server_error", None, status)
            if status >= 500
            else ("rate_limit_error", "rate_limit_exceeded", status)
            if status == 429
            else ("invalid_request_error", None, status)
        )
    etype, code, _ = kind
    headers: Headers = []
    details = err.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if detail.get("reason") == "API_KEY_INVALID":
            etype, code = "authentication_error", "invalid_api_key"
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = max(1, round(float(delay[:-1])))
            except ValueError:
                continue
            headers.append((b"retry-after", str(seconds).encode()))
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = f"Gemini upstream answered {status}"
    return status, {"message": message, "type": etype, "param": None, "code": code}, headers


def _error_translated(status: int, err: Any) -> Translated:
    status, fields, headers = _error_fields(status, err)
    return Translated(status, _encode({"error": fields}), headers=headers)


def _new_id() -> str:
    return secrets.token_hex(12)


def _usage(meta: Any) -> dict[str, Any] | None:
    if not isinstance(meta, dict):
        return None

    def count(key: str) -> int:
        value = meta.get(key)
        return value if isinstance(value, int) else 0

    prompt = count("promptTokenCount")
    thoughts = count("thoughtsTokenCount")
    completion = count("candidatesTokenCount") + thoughts
    total = count("totalTokenCount") or prompt + completion
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
    }
    if "cachedContentTokenCount" in meta:
        usage["prompt_tokens_details"] = {"cached_tokens": count("cachedContentTokenCount")}
    if "thoughtsTokenCount" in meta:
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


class _Parts:
    """The OpenAI view of one candidate's ``content.parts``."""

    __slots__ = ("calls", "text", "thoughts")

    def __init__(self, candidate: dict[str, Any], call_id: Any) -> None:
        texts: list[str] = []
        thoughts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                (thoughts if part.get("thought") is True else texts).append(text)
                continue
            fc = part.get("functionCall")
            if isinstance(fc, dict):
                cid = fc.get("id")
                call: dict[str, Any] = {
                    "id": cid if isinstance(cid, str) and cid else call_id(),
                    "type": "function",
                    "function": {
                        "name": fc.get("name") or "",
                        "arguments": _encode(fc.get("args") or {}).decode(),
                    },
                }
                sig = part.get("thoughtSignature")
                if isinstance(sig, str) and sig:
                    call["extra_content"] = {"google": {"thought_signature": sig}}
                self.calls.append(call)
        self.text = "".join(texts)
        self.thoughts = "".join(thoughts)


def _call_ids(response_id: str) -> Any:
    n = 0

    def next_id() -> str:
        nonlocal n
        n += 1
        return f"call_{response_id}_{n}"

    return next_id


def gemini_to_openai_response(
    status: int, body: bytes, *, model: str, created: int | None = None
) -> Translated:
    """Translate a non-streamed Gemini answer (or error) into an OpenAI answer."""
    try:
        data = _decode(body)
    except msgspec.DecodeError:
        data = None
    if status >= 400 or (isinstance(data, dict) and "error" in data):
        err = data.get("error") if isinstance(data, dict) else None
        if err is None:
            snippet = body[:200].decode("utf-8", "replace")
            err = {"message": f"Gemini upstream answered {status}: {snippet}"}
        return _error_translated(status, err)
    if not isinstance(data, dict):
        return _error_translated(502, {"message": "Gemini upstream answered invalid JSON"})

    response_id = data.get("responseId")
    rid = response_id if isinstance(response_id, str) and response_id else _new_id()
    call_id = _call_ids(rid)
    choices: list[dict[str, Any]] = []
    candidates = data.get("candidates")
    for pos, cand in enumerate(candidates if isinstance(candidates, list) else []):
        if not isinstance(cand, dict):
            continue
        parts = _Parts(cand, call_id)
        message: dict[str, Any] = {"role": "assistant", "content": parts.text or None}
        if parts.thoughts:
            message["reasoning_content"] = parts.thoughts
        if parts.calls:
            message["tool_calls"] = parts.calls
        index = cand.get("index")
        choices.append(
            {
                "index": index if isinstance(index, int) else pos,
                "message": message,
                "finish_reason": _finish_reason(cand.get("finishReason"), bool(parts.calls)),
                "logprobs": None,
            }
        )
    if not choices:
        feedback = data.get("promptFeedback")
        blocked = isinstance(feedback, dict) and feedback.get("blockReason")
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None},
                "finish_reason": "content_filter" if blocked else "stop",
                "logprobs": None,
            }
        )
    out: dict[str, Any] = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": choices,
    }
    usage = _usage(data.get("usageMetadata"))
    if usage is not None:
        out["usage"] = usage
    return Translated(200, _encode(out))


# ---------------------------------------------------------------------------------------------
# Streaming: Gemini SSE → OpenAI chat.completion.chunk SSE
# ---------------------------------------------------------------------------------------------

_DONE: Final = b"data: [DONE]\n\n"


class GeminiToOpenAIStream:
    """Gemini ``streamGenerateContent?alt=sse`` bytes → OpenAI chunk SSE bytes (StreamTranslator).

    Per candidate: a role chunk the first time it appears, one chunk per event with its text
    (and ``reasoning_content`` for thought summaries), one chunk per function call carrying the
    whole arguments, and a finish chunk when ``finishReason`` arrives. ``finish`` adds the usage
    chunk (when ``include_usage`` and Gemini reported usage) and ``data: [DONE]``; a stream that
    ended without any ``finishReason`` is a truncation and ends with an error event instead.
    """

    __slots__ = (
        "_buf",
        "_call_id",
        "_created",
        "_data",
        "_done",
        "_finished",
        "_id",
        "_include_usage",
        "_model",
        "_prefix",
        "_started",
        "_tool_index",
        "_usage",
        "truncated",
    )

    def __init__(
        self,
        model: str,
        include_usage: bool,
        *,
        created: int | None = None,
    ) -> None:
        self._model = model
        self._include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        #: True once ``finish`` found the stream cut short (the router counts it a failure).
        self.truncated = False
        self._buf = b""
        self._data: list[bytes] = []
        self._id: str | None = None
        self._call_id: Any = None
        self._prefix = b""
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._tool_index: dict[int, int] = {}
        self._usage: dict[str, Any] | None = None
        self._done = False

    # --- StreamTranslator -------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        # The kept remainder never holds a newline: resume the search after it.
        scan = len(self._buf)
        buf = self._buf + data if scan else data
        out: list[bytes] = []
        start = 0
        while not self._done:
            nl = buf.find(b"\n", max(start, scan))
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    payload = b"\n".join(self._data)
                    self._data = []
                    out.append(self._event(payload))
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments, event:, id:, retry: carry nothing Gemini uses
        self._buf = buf[start:] if not self._done else b""
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        out: list[bytes] = []
        tail = self._buf.rstrip(b"\r")
        if tail.startswith(b"data:"):  # a last event without its blank line
            value = tail[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        self._buf = b""
        if self._data:
            payload = b"\n".join(self._data)
            self._data = []
            out.append(self._event(payload))
        if self._done:
            return b"".join(out)
        if not self._finished:
            self.truncated = True
            out.append(self.error(502, "Gemini stream ended before a finish reason"))
            return b"".join(out)
        if self._include_usage and self._usage is not None:
            out.append(self._sse({**self._head(), "choices": [], "usage": self._usage}))
        out.append(_DONE)
        self._done = True
        return b"".join(out)

    def error(self, status: int, message: str) -> bytes:
        if self._done:
            return b""
        self._done = True
        return b"data: " + openai_error_body(status, message) + b"\n\n" + _DONE

    # --- internals --------------------------------------------------------------------------

    def _head(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    @staticmethod
    def _sse(obj: dict[str, Any]) -> bytes:
        return b"data: " + _encode(obj) + b"\n\n"

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._sse({**self._head(), "choices": [choice]})

    def _event(self, payload: bytes) -> bytes:
        try:
            data = _decode(payload)
        except msgspec.DecodeError:
            return self.error(502, "Gemini stream sent an event that is not valid JSON")
        if not isinstance(data, dict):
            return self.error(502, "Gemini stream sent an event that is not a JSON object")
        if "error" in data:
            self._done = True
            _, fields, _ = _error_fields(0, data["error"])
            return self._sse({"error": fields}) + _DONE
        if self._id is None:
            rid = data.get("responseId")
            rid = rid if isinstance(rid, str) and rid else _new_id()
            self._id = f"chatcmpl-{rid}"
            self._call_id = _call_ids(rid)
        usage = _usage(data.get("usageMetadata"))
        if usage is not None:
            self._usage = usage

        out: list[bytes] = []
        candidates = data.get("candidates")
        cands = candidates if isinstance(candidates, list) else []
        for pos, cand in enumerate(cands):
            if not isinstance(cand, dict):
                continue
            index = cand.get("index")
            index = index if isinstance(index, int) else pos
            if index in self._finished:
                continue
            if index not in self._started:
                self._started.add(index)
                out.append(self._chunk(index, {"role": "assistant", "content": ""}))
            parts = _Parts(cand, self._call_id)
            delta: dict[str, Any] = {}
            if parts.thoughts:
                delta["reasoning_content"] = parts.thoughts
            if parts.text:
                delta["content"] = parts.text
            if delta:
                out.append(self._chunk(index, delta))
            for call in parts.calls:
                k = self._tool_index.get(index, 0)
                self._tool_index[index] = k + 1
                out.append(self._chunk(index, {"tool_calls": [{"index": k, **call}]}))
            reason = cand.get("finishReason")
            if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
                self._finished.add(index)
                has_calls = self._tool_index.get(index, 0) > 0
                out.append(self._chunk(index, {}, _finish_reason(reason, has_calls)))
        if not cands:
            feedback = data.get("promptFeedback")
            if (
                isinstance(feedback, dict)
                and feedback.get("blockReason")
                and 0 not in self._finished
            ):
                if 0 not in self._started:
                    self._started.add(0)
                    out.append(self._chunk(0, {"role": "assistant", "content": ""}))
                self._finished.add(0)
                out.append(self._chunk(0, {}, "content_filter"))
        return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Model discovery and the OpenAI-compatible endpoint
# ---------------------------------------------------------------------------------------------


def gemini_models_call(api_key: str | None) -> UpstreamCall:
    """The ``models.list`` request (also a cheap health probe)."""
    headers = [h for h in gemini_auth_headers(api_key) if h[0] != b"content-type"]
    return UpstreamCall(b"GET", b"/v1beta/models?pageSize=1000", headers, b"")


def gemini_models(body: bytes) -> tuple[str, ...]:
    """Model ids from a ``models.list`` answer, keeping those that can ``generateContent``."""
    try:
        data = _decode(body)
    except msgspec.DecodeError:
        raise TranslationError("models list is not valid JSON") from None
    models = data.get("models") if isinstance(data, dict) else None
    out: list[str] = []
    for entry in models if isinstance(models, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        methods = entry.get("supportedGenerationMethods")
        if isinstance(methods, list) and "generateContent" not in methods:
            continue
        name: str = entry["name"]
        out.append(name.removeprefix("models/"))
    return tuple(out)


_COMPAT_PREFIX: Final = b"/v1beta/openai/"


def openai_compat_path(path: bytes) -> bytes:
    """``/v1/chat/completions`` → ``/v1beta/openai/chat/completions`` (any ``/v1/`` path;
    the query string is kept). For Gemini's OpenAI-compatible endpoint, a pass-through mode."""
    if path.startswith(b"/v1/"):
        return _COMPAT_PREFIX + path[4:]
    if path.startswith(_COMPAT_PREFIX):
        return path
    raise TranslationError(f"no Gemini OpenAI-compatible path for {path.decode(errors='replace')}")


def openai_compat_headers(api_key: str | None) -> Headers:
    """Auth for Gemini's OpenAI-compatible endpoint: ``authorization: Bearer <key>``."""
    return [(b"authorization", b"Bearer " + api_key.encode())] if api_key else []
