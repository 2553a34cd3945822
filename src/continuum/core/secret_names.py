"""Names that sound secret (sans-IO): a config key, a header or a URL query parameter whose
name contains one of these words has its value masked wherever the router shows it."""

from __future__ import annotations

from typing import Final

SECRET_WORDS: Final = ("key", "token", "secret", "password", "passwd", "auth", "credential",
                       "signature")


def is_secret_name(name: str) -> bool:
    """Whether ``name`` (any case) contains a word of :data:`SECRET_WORDS`."""
    low = name.lower()
    return any(word in low for word in SECRET_WORDS)
