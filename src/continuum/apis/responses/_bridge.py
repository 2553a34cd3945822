"""The bridge as one object per request: what the request path builds a ``Call`` from."""

from __future__ import annotations

from typing import Final, final

import msgspec

from ..types import Translated
from ._answer import chat_to_response
from ._common import (
    JSON,
    BridgeError,
    ResponseContext,
    decode,
    encode,
    new_response_id,
    now_seconds,
)
from ._request import (
    DeveloperRole,
    MaxTokensField,
    ResponsesRequest,
    chat_request,
    parse_responses_request,
)
from ._store import StoredResponse
from ._stream import ChatToResponsesStream


@final
class ChatBridge(msgspec.Struct, frozen=True):
    """One Responses request translated to Chat Completions.

    ``body`` goes to the backend's ``/v1/chat/completions`` (or on through the Anthropic or
    Gemini translator); :meth:`translate` and :meth:`stream_translator` turn its answer
    back; :meth:`stored` makes the entry to keep when ``store`` is true.
    """

    body: bytes
    stream: bool
    store: bool
    context: ResponseContext
    #: This turn's input items (a string input as one user message).
    input_items: list[JSON]
    #: The stored conversation this turn continues (empty without previous_response_id).
    history: list[JSON]

    def translate(self, status: int, body: bytes) -> Translated:
        """A complete chat answer (or error) → the Response object (or OpenAI error)."""
        return chat_to_response(self.context, status, body)

    def stream_translator(self) -> ChatToResponsesStream:
        """A fresh translator for a streamed chat answer."""
        return ChatToResponsesStream(self.context)

    def stored(self, response: JSON | bytes) -> StoredResponse:
        """The entry to store once the answer is known (the Response object, as a dict
        from the stream translator or as the bytes :meth:`translate` returned)."""
        obj: JSON = decode(response) if isinstance(response, bytes) else response
        raw = response if isinstance(response, bytes) else encode(response)
        output = obj.get("output")
        inputs = [_stored_item(self.context, i, item) for i, item in enumerate(self.input_items)]
        conversation = [*self.history, *inputs, *(output if isinstance(output, list) else ())]
        return StoredResponse(self.context.id, raw, encode(inputs), encode(conversation))


_ID_PREFIXES: Final = {"message": "msg_", "function_call": "fc_",
                       "function_call_output": "fco_", "reasoning": "rs_"}


def _stored_item(ctx: ResponseContext, index: int, item: JSON) -> JSON:
    """An input item in the shape a stored item has (what ``input_items`` lists): an id, a
    status, and message content as parts."""
    out = dict(item)
    kind = out.get("type")
    out.setdefault("id", ctx.item_id(_ID_PREFIXES.get(str(kind), "item_"), f"in{index}"))
    if kind == "message":
        assistant = out.get("role") == "assistant"
        content = out.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        if assistant and isinstance(content, list):
            content = [
                {"type": "output_text", "text": p.get("text", ""),
                 "annotations": p.get("annotations") or []}
                if isinstance(p, dict) and p.get("type") in ("input_text", "output_text") else p
                for p in content
            ]
        out["content"] = content
    if kind in ("message", "function_call", "function_call_output"):
        out.setdefault("status", "completed")
    return out


def responses_to_chat(
    request: ResponsesRequest | bytes,
    *,
    model: str,
    previous: StoredResponse | None = None,
    max_tokens_field: MaxTokensField = "max_tokens",
    developer_role: DeveloperRole = "system",
    keep_reasoning: bool = False,
    response_id: str | None = None,
    created_at: int | None = None,
) -> ChatBridge:
    """Translate a Responses ``create`` request for a Chat Completions backend.

    ``previous`` is the stored response named by ``previous_response_id`` (the caller
    fetched it from its :class:`ConversationStore`; None when it found none: a 400
    ``previous_response_not_found``). ``max_tokens_field`` names the chat field that gets
    ``max_output_tokens`` (``max_tokens`` is the one every OpenAI-compatible server knows;
    OpenAI's reasoning models want ``max_completion_tokens``); ``developer_role`` is the
    role given to ``instructions`` and developer messages (many open chat templates know
    only ``system``); ``keep_reasoning`` sends the text of reasoning items back as the
    next assistant message's ``reasoning_content`` instead of dropping it.
    """
    req = request if isinstance(request, ResponsesRequest) else parse_responses_request(request)
    history: list[JSON] = []
    if req.previous_response_id is not None:
        if previous is None or previous.id != req.previous_response_id:
            raise BridgeError(
                f"Previous response with id '{req.previous_response_id}' not found.",
                "previous_response_id", code="previous_response_not_found")
        history = previous.items()
    chat = chat_request(req, model=model, history=history, max_tokens_field=max_tokens_field,
                        developer_role=developer_role, keep_reasoning=keep_reasoning)
    ctx = ResponseContext(
        response_id if response_id is not None else new_response_id(),
        created_at if created_at is not None else now_seconds(),
        model, chat.echo, chat.logprobs,
    )
    return ChatBridge(encode(chat.body), req.stream, req.store, ctx, chat.input_items, history)
