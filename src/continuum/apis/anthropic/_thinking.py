"""Thinking blocks on their way through OpenAI chat, both directions.

Anthropic's extended thinking with tools only works when the assistant turn that made the
tool calls is sent back starting with its thinking blocks, unmodified (the signature is
checked). OpenAI chat has no such field, so the router uses the one other gateways use:
``thinking_blocks`` on the assistant message (and, indexed, in stream deltas), next to the
plain ``reasoning_content`` text:

* ``{"type": "thinking", "thinking": "...", "signature": "..."}``
* ``{"type": "redacted_thinking", "data": "..."}``

The other way round, a ``/v1/messages`` client (Claude Code) keeps whatever thinking blocks
it gets and sends them back: the router uses that to carry a Gemini thought signature
(``tool_calls[].extra_content.google.thought_signature`` in chat) through an Anthropic
client, as a thinking block with no text whose signature is a *carrier*:
``continuum.gemini-signature:`` + ``{"id": <tool call id>, "signature": <signature>}``. No
Anthropic signature has that prefix (theirs are base64), so the two never mix.
"""

from __future__ import annotations

from typing import Final

import msgspec

from ..types import TranslationError
from ._common import JSON, decode, encode

#: What a signature that carries a Gemini thought signature starts with.
CARRIER_PREFIX: Final = "continuum.gemini-signature:"


def carrier(call_id: str, signature: str) -> str:
    """The Anthropic ``signature`` carrying ``signature`` of the tool call ``call_id``."""
    return CARRIER_PREFIX + encode({"id": call_id, "signature": signature}).decode()


def read_carrier(signature: object) -> tuple[str, str] | None:
    """(tool call id, Gemini thought signature) of a carrier; None for anything else."""
    if not isinstance(signature, str) or not signature.startswith(CARRIER_PREFIX):
        return None
    try:
        obj = decode(signature[len(CARRIER_PREFIX):])
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    call_id, sig = obj.get("id"), obj.get("signature")
    if isinstance(call_id, str) and isinstance(sig, str) and sig:
        return call_id, sig
    return None


def carrier_block(call_id: str, signature: str) -> JSON:
    return {"type": "thinking", "thinking": "", "signature": carrier(call_id, signature)}


def _block(item: object, where: str) -> JSON | None:
    """One thinking block as Anthropic wants it back: its own fields, nothing else (the
    ``index`` a streaming client accumulated by is dropped). None for a block Anthropic
    could not have signed (no signature, or a carrier of a Gemini one): like
    ``reasoning_content``, it cannot go back."""
    kind = item.get("type") if isinstance(item, dict) else None
    if kind == "thinking":
        assert isinstance(item, dict)
        thinking, signature = item.get("thinking", ""), item.get("signature", "")
        if not isinstance(thinking, str) or not isinstance(signature, str):
            raise TranslationError(
                f"{where}: a thinking block's 'thinking' and 'signature' must be strings",
                param=where)
        if not signature or signature.startswith(CARRIER_PREFIX):
            return None
        return {"type": "thinking", "thinking": thinking, "signature": signature}
    if kind == "redacted_thinking":
        assert isinstance(item, dict)
        data = item.get("data")
        if isinstance(data, str):
            return {"type": "redacted_thinking", "data": data}
        raise TranslationError(f"{where}: a redacted_thinking block needs its 'data' string",
                               param=where)
    raise TranslationError(
        f"{where}: expected a thinking or redacted_thinking block, got {kind!r}", param=where)


def thinking_blocks(msg: JSON, where: str) -> list[JSON]:
    """The thinking blocks of an OpenAI assistant message's ``thinking_blocks``, in order,
    for Anthropic (blocks it could not have signed are left out)."""
    blocks = msg.get("thinking_blocks")
    if blocks is None:
        return []
    if not isinstance(blocks, list):
        raise TranslationError(f"{where}.thinking_blocks must be a list",
                               param=f"{where}.thinking_blocks")
    out = [_block(item, f"{where}.thinking_blocks[{i}]") for i, item in enumerate(blocks)]
    return [b for b in out if b is not None]


def thinking_part(part: JSON, where: str) -> JSON | None:
    """A thinking content part of an assistant message as a block (None: see _block)."""
    return _block(part, where)
