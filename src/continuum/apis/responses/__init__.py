"""The Responses API bridge (sans-IO): ``POST /v1/responses`` for backends that speak only
Chat Completions, directly or through the Anthropic and Gemini translators.

* :func:`parse_responses_request` — decode the body (which stored conversation to fetch);
* :func:`responses_to_chat` — the :class:`ChatBridge`: the chat request body, and how to
  turn the answer back (:meth:`ChatBridge.translate`, :meth:`ChatBridge.stream_translator`,
  a :class:`ChatToResponsesStream`) and what to store (:meth:`ChatBridge.stored`);
* :class:`ConversationStore` — where stored responses live; :class:`MemoryConversationStore`
  keeps them in process, bounded, for a TTL.
"""

from ._answer import chat_to_response as chat_to_response
from ._bridge import ChatBridge as ChatBridge
from ._bridge import responses_to_chat as responses_to_chat
from ._common import BridgeError as BridgeError
from ._common import ResponseContext as ResponseContext
from ._common import new_response_id as new_response_id
from ._request import DeveloperRole as DeveloperRole
from ._request import MaxTokensField as MaxTokensField
from ._request import ResponsesRequest as ResponsesRequest
from ._request import parse_responses_request as parse_responses_request
from ._store import ConversationStore as ConversationStore
from ._store import MemoryConversationStore as MemoryConversationStore
from ._store import StoredResponse as StoredResponse
from ._stream import ChatToResponsesStream as ChatToResponsesStream

__all__ = [
    "BridgeError",
    "ChatBridge",
    "ChatToResponsesStream",
    "ConversationStore",
    "DeveloperRole",
    "MaxTokensField",
    "MemoryConversationStore",
    "ResponseContext",
    "ResponsesRequest",
    "StoredResponse",
    "chat_to_response",
    "new_response_id",
    "parse_responses_request",
    "responses_to_chat",
]
