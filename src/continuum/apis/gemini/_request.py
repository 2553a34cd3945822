"""An OpenAI chat request → a Gemini ``generateContent`` (or ``streamGenerateContent``)
call: messages, tools and their schemas, generation settings (the mapping decisions are in
the package's docstring)."""

from __future__ import annotations

import mimetypes
import urllib.parse
from typing import Any, Final

import msgspec

from ..content import parse_data_url
from ..types import TranslationError, UpstreamCall

_decode = msgspec.json.decode
_encode = msgspec.json.encode

#: OpenAI ``reasoning_effort`` → Gemini ``thinkingConfig.thinkingBudget`` (tokens).
#: ``xhigh`` and ``max`` ask for more than ``high``, which is the most every thinking model
#: takes (Flash stops at 24576): they get the dynamic budget (-1), the model thinking as
#: much as it decides, up to its own ceiling.
REASONING_BUDGETS: Final[dict[str, int]] = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": -1,
    "max": -1,
}

#: Google's documented placeholder for a function call whose thought signature is unknown.
SKIP_SIGNATURE: Final = "skip_thought_signature_validator"

_JSON: Final = b"application/json"


def _model_path(model: str) -> str:
    if not model:
        raise TranslationError("model must not be empty", "model")
    name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    return urllib.parse.quote(name, safe="/-._~")


def openai_to_gemini_request(
    body: bytes, *, model: str, stream: bool
) -> UpstreamCall:
    """Translate an OpenAI ``/v1/chat/completions`` body into a Gemini call (its
    ``x-goog-api-key`` is the backend's :class:`BackendProfile`'s)."""
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
    return UpstreamCall(b"POST", path.encode(), [(b"content-type", _JSON)], _encode(out))


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
            add("user", [_function_response(name, content, param,
                                            error=msg.get("is_error") is True)])
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


def _inline_data(url: str, param: str) -> dict[str, Any]:
    parsed = parse_data_url(url)
    if parsed is None:
        raise TranslationError(f"{param}: malformed data URL", param)
    mime, data = parsed
    return {"inlineData": {"mimeType": mime, "data": data}}


def _image_part(url: Any, param: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{param}.image_url.url must be a string", param)
    if url.startswith("data:"):
        return _inline_data(url, param)
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
            parts.append(_inline_data(data, p))
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


def _function_response(name: str, content: Any, param: str, *, error: bool = False
                       ) -> dict[str, Any]:
    """A tool result as Gemini's ``functionResponse``: a JSON object is the response, any
    other value goes under ``content``; a failed tool's (``is_error``, which the
    ``/v1/messages`` front door sets) under ``error``, the key Gemini reads as a failure."""
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
    if error:
        response = {"error": value}
    else:
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
