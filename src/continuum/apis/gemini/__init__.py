"""OpenAI Chat Completions ↔ Gemini native API (``generateContent`` / ``streamGenerateContent``).

Sans-IO: every function takes and returns bytes (or the shared ``apis.types`` shapes); the
BackendActor does the I/O. Four pieces:

* :func:`openai_to_gemini_request` — an OpenAI ``/v1/chat/completions`` body → an
  :class:`UpstreamCall` to ``/v1beta/models/{model}:generateContent`` (or
  ``:streamGenerateContent?alt=sse``) (its ``x-goog-api-key`` comes from the backend's
  profile, :mod:`continuum.apis.profiles`).
* :func:`gemini_to_openai_response` — a ``GenerateContentResponse`` (or a Gemini error body)
  → an OpenAI ``chat.completion`` (or OpenAI-shaped error), keeping the HTTP status.
* :class:`GeminiToOpenAIStream` — Gemini SSE → OpenAI ``chat.completion.chunk`` SSE,
  incrementally (events may be split at any byte).
* :func:`gemini_model_page` — a ``models.list`` page → the model ids that can generate
  content, and the next page's token.

Gemini's own OpenAI-compatible endpoint (``gemini_api: openai``) is a pass-through: its
path prefix and credentials are facts of the backend's profile (:mod:`continuum.apis.profiles`).

One module per stage: ``_request``, ``_response`` (with the model list) and ``_stream``.

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
  response itself; any other JSON value or plain text is wrapped as ``{"content": ...}``; a
  failed tool's (``is_error: true``, which the ``/v1/messages`` front door sets) as
  ``{"error": ...}``.
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
  :data:`REASONING_BUDGETS` (none 0, minimal 512, low 1024, medium 8192, high 24576, xhigh
  and max -1: dynamic). The
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
  ``content_filter``, MALFORMED_FUNCTION_CALL/UNEXPECTED_TOOL_CALL/TOO_MANY_TOOL_CALLS→ a
  502 error naming it (a stream: an error event, ``truncated``), anything else→``stop``. A
  prompt blocked before generation (``promptFeedback.blockReason``, no candidates) is one
  empty ``content_filter`` choice.
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

from ._request import REASONING_BUDGETS as REASONING_BUDGETS
from ._request import SKIP_SIGNATURE as SKIP_SIGNATURE
from ._request import openai_to_gemini_request as openai_to_gemini_request
from ._response import gemini_model_page as gemini_model_page
from ._response import gemini_to_openai_response as gemini_to_openai_response
from ._stream import GeminiToOpenAIStream as GeminiToOpenAIStream

__all__ = [
    "REASONING_BUDGETS",
    "GeminiToOpenAIStream",
    "gemini_model_page",
    "gemini_to_openai_response",
    "openai_to_gemini_request",
]
