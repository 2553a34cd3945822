"""Admin credentials, checked in constant time (sans-IO).

Every secret comparison hashes both sides first (SHA-256) and compares the digests with
``hmac.compare_digest``: the time taken depends neither on how much of a guess is right nor
on its length, so a client timing its 401s learns nothing. Basic auth compares the user and
the password both, every time, before it decides.

The methods (``admin.auth.method``):

* ``none``: no credentials; the caller decides who may come in (the admin API admits
  loopback clients only);
* ``bearer_token``: ``Authorization: Bearer <token>``;
* ``basic``: ``Authorization: Basic base64(username:password)``;
* ``api_key``: ``X-API-Key: <token>``, or a client API key with the ``admin`` scope when a
  key store provides :data:`AdminKeyCheck`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from base64 import b64decode
from collections.abc import Callable
from typing import Final, final

#: The seam for client keys with the ``admin`` scope: given the ``X-API-Key`` a client sent,
#: the key's id when it is a valid, enabled key with that scope (for the audit line), else
#: None. Provided by the key store; it must take the same time for every wrong key.
AdminKeyCheck = Callable[[bytes], "str | None"]

METHODS: Final = ("none", "bearer_token", "basic", "api_key")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def same_secret(given: bytes, expected_digest: bytes) -> bool:
    """``given`` equals the secret whose SHA-256 is ``expected_digest``, in constant time."""
    return hmac.compare_digest(_digest(given), expected_digest)


@final
class AdminCredentials:
    """What the admin API accepts, built once per config version."""

    __slots__ = ("_key_check", "_password", "_token", "_username", "method", "realm")

    def __init__(self, method: str, *, token: str = "", username: str = "", password: str = "",
                 key_check: AdminKeyCheck | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown admin auth method {method!r}")
        self.method = method
        self._token = _digest(token.encode())
        self._username = _digest(username.encode())
        self._password = _digest(password.encode())
        self._key_check = key_check
        #: What a 401 names in ``WWW-Authenticate``.
        self.realm = {"bearer_token": b'Bearer realm="admin"', "basic": b'Basic realm="admin"',
                      "api_key": b'ApiKey realm="admin"'}.get(method, b"")

    @property
    def open(self) -> bool:
        """No credentials are asked for (``method: none``)."""
        return self.method == "none"

    def check(self, authorization: bytes | None, api_key: bytes | None) -> str | None:
        """Who the caller is (for the audit line: ``bearer token``, ``basic user NAME``,
        ``api key``, ``api key ID``), or None when the credentials are missing or wrong.
        ``authorization`` and ``api_key`` are the raw header values (or None)."""
        method = self.method
        if method == "none":
            return "anonymous"
        if method == "api_key":
            if api_key is None:
                return None
            if same_secret(api_key, self._token):
                return "api key"
            if self._key_check is not None:
                key_id = self._key_check(api_key)
                if key_id is not None:
                    return f"api key {key_id}"
            return None
        if authorization is None:
            return None
        scheme, _, value = authorization.strip().partition(b" ")
        scheme = scheme.lower()
        value = value.strip()
        if method == "bearer_token":
            ok = same_secret(value, self._token)
            return "bearer token" if scheme == b"bearer" and ok else None
        if scheme != b"basic":
            return None
        try:
            decoded = b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        user, colon, password = decoded.partition(b":")
        # Both compared every time: which of the two was wrong takes no more or less time.
        user_ok = same_secret(user, self._username)
        password_ok = same_secret(password, self._password)
        if not (colon and user_ok & password_ok):
            return None
        return f"basic user {user.decode('utf-8', 'replace')}"
