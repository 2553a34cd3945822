"""What a translator holds of one upstream answer, at most.

A translated stream is parsed, so a hostile (or broken) upstream could make a translator
hold without end: one SSE event that never ends, tool calls by the million, argument
fragments held back for a call whose block cannot open yet. Each bound is far above what any
real answer needs; past it the client's stream ends with a clear error event and the attempt
counts as the backend's failure.
"""

from __future__ import annotations

from typing import Final

#: The bytes of one upstream SSE event (an inline image or a thought signature of a few MiB
#: fits; a line that never ends does not).
MAX_EVENT_BYTES: Final = 8 << 20

#: Content blocks (text, thinking, tool calls) of one answer, and the highest block or tool
#: call ``index`` an upstream may use.
MAX_BLOCKS: Final = 1024

#: Argument bytes held back for parallel tool calls whose block cannot open yet (their
#: fragments arrive while another call's block is still open).
MAX_HELD_ARGUMENTS: Final = 8 << 20
