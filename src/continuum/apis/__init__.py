"""Sans-IO translation between the client APIs and the backend APIs.

Plain functions and classes over bytes and dicts, never sockets or trio: each direction is
tested from recorded fixtures. ``responses`` bridges the OpenAI Responses API onto Chat
Completions.
"""
