"""Provider translation (sans-IO): OpenAI chat ↔ Anthropic Messages ↔ Gemini generateContent.

Everything here works on bytes and plain dicts, never on sockets, so each direction is
tested from recorded fixtures. The shapes every translator shares live in ``_types``.
"""
