"""Sans-IO translation between the client APIs and the backend APIs.

Plain functions and classes over bytes and dicts, never sockets or trio: each direction is
tested from recorded fixtures. ``anthropic`` and ``gemini`` translate OpenAI chat to and from
their APIs, ``responses`` bridges the OpenAI Responses API onto Chat Completions, ``calls``
builds one attempt's upstream call for every pair of client and backend API, and
``profiles`` holds each backend-API fact (credentials, paths, the model list) in one place.
"""
