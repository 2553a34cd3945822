"""OpenAI Chat Completions ↔ Anthropic Messages, both directions, sans-IO.

Four modules, one per direction and stage: ``_request`` (a chat request → an Anthropic call),
``_response`` (an Anthropic answer or stream → chat), ``_front`` (the ``/v1/messages`` front
door: a Messages request → chat, and a chat answer or stream → Messages) and ``_common``
(what they share: JSON helpers, error shapes, the SSE reader).

Backend direction (the client speaks OpenAI chat, the backend is ``type: anthropic``):

* :func:`openai_to_anthropic_request` — chat request body → ``POST /v1/messages`` call;
* :func:`anthropic_to_openai_response` — Message (or Anthropic error) → ``chat.completion``
  (or OpenAI error);
* :class:`AnthropicToOpenAIStream` — Anthropic SSE → ``chat.completion.chunk`` SSE.

Front-door direction (the client speaks Anthropic ``/v1/messages``, the backend is
OpenAI-compatible):

* :func:`anthropic_to_openai_request` — Messages request → chat request body;
* :func:`openai_to_anthropic_response` — ``chat.completion`` (or OpenAI error) → Message
  (or Anthropic error);
* :class:`OpenAIToAnthropicStream` — chunk SSE → the Anthropic event sequence;
* the router's own errors in Anthropic's shape are :mod:`continuum.core.errors`'s.

Mapping decisions (the ones the two APIs leave open):

* System/developer messages, wherever they appear, become the top-level ``system`` (a plain
  string when there is one string system message, else a list of text blocks, one per text).
  Anthropic ``system`` blocks become *one* OpenAI system message, texts joined by a blank
  line (several system messages confuse many chat templates).
* Consecutive messages of the same role are merged (Anthropic requires alternation); ``tool``
  messages become ``tool_result`` blocks of a user message, so a run of tool messages and a
  following user message share one user turn, tool results first. Message ``name`` is dropped.
* ``temperature`` is clamped to Anthropic's 0..1 (OpenAI allows 0..2).
* ``reasoning_effort`` → ``thinking`` budget: ``low`` 1024, ``medium`` 4096, ``high`` 16384,
  ``xhigh`` 32768, ``max`` 49152 (``minimal``/``none`` → no thinking). When the budget is not
  below ``max_tokens`` the budget is added to ``max_tokens`` (the client's answer keeps its
  room). Extended thinking rejects non-default sampling, so ``temperature``/``top_p`` are
  dropped then. A client's own ``thinking`` field wins over ``reasoning_effort``. Thinking
  Anthropic would refuse (a forced ``tool_choice``; a tool loop whose turn came back without
  its thinking blocks) is dropped for the request, or a TranslationError with
  ``thinking_conflict="reject"``; with thinking off, thinking blocks leave the history.
* OpenAI-only knobs with no Anthropic meaning (penalties, seed, logit_bias, store, OpenAI
  ``metadata`` …) are dropped; fields this module does not know pass through untouched
  (``top_k``, ``thinking``, ``service_tier`` …). ``n > 1``, ``logprobs``, a JSON
  ``response_format`` and audio/file content cannot be expressed: TranslationError.
* Usage: OpenAI ``prompt_tokens`` = Anthropic ``input_tokens`` + cache creation + cache read
  tokens (Anthropic's ``input_tokens`` excludes cached ones); cache reads are also reported as
  ``prompt_tokens_details.cached_tokens``. The reverse splits them again.
* ``thinking`` blocks/deltas become the de-facto ``reasoning_content`` field, and the blocks
  themselves (signatures, ``redacted_thinking``) travel as ``thinking_blocks`` and come back
  as the assistant turn's first blocks, unmodified (:mod:`._thinking`).
* Stop reasons: end_turn/stop_sequence/pause_turn → stop, max_tokens and
  model_context_window_exceeded → length, tool_use → tool_calls, refusal → content_filter
  (pause_turn, refusal and model_context_window_exceeded also as ``native_finish_reason``);
  back: stop → end_turn (tool_use when calls were made), length → max_tokens,
  tool_calls/function_call → tool_use, content_filter or a ``refusal`` → refusal.
* Front door: ``top_k`` is dropped; ``thinking`` becomes ``reasoning_effort`` (or an exact
  Gemini budget) and thinking blocks ``reasoning_content`` as the backend's
  :class:`~continuum.apis.types.ChatDialect` says; Gemini thought signatures ride in
  thinking blocks (:mod:`._thinking`); parallel tool call deltas are assembled by
  :mod:`._toolcalls`.
"""

from __future__ import annotations

from ._front import OpenAIToAnthropicStream as OpenAIToAnthropicStream
from ._front import anthropic_to_openai_request as anthropic_to_openai_request
from ._front import openai_to_anthropic_response as openai_to_anthropic_response
from ._request import REASONING_BUDGETS as REASONING_BUDGETS
from ._request import AnthropicCall as AnthropicCall
from ._request import openai_to_anthropic_request as openai_to_anthropic_request
from ._response import AnthropicToOpenAIStream as AnthropicToOpenAIStream
from ._response import anthropic_to_openai_response as anthropic_to_openai_response

__all__ = [
    "REASONING_BUDGETS",
    "AnthropicCall",
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "anthropic_to_openai_request",
    "anthropic_to_openai_response",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
]
