"""Admin credentials: each method accepts exactly its credentials, and every comparison is
made on equal-length digests (so its time says nothing about the guess)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

import continuum.core.credentials as credentials
from continuum.core.credentials import AdminCredentials


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_none_lets_anyone_in() -> None:
    creds = AdminCredentials("none")
    assert creds.open and creds.check(None, None) == "anonymous"


def test_bearer_token() -> None:
    creds = AdminCredentials("bearer_token", token="s3cret-token")
    assert not creds.open
    assert creds.check(b"Bearer s3cret-token", None) == "bearer token"
    assert creds.check(b"bearer  s3cret-token ", None) == "bearer token"
    for wrong in (None, b"", b"Bearer", b"Bearer s3cret-toke", b"Bearer s3cret-token-x",
                  b"Basic s3cret-token", b"s3cret-token"):
        assert creds.check(wrong, None) is None, wrong
    assert creds.check(None, b"s3cret-token") is None  # the X-API-Key header is not read
    assert creds.realm == b'Bearer realm="admin"'


def test_basic() -> None:
    creds = AdminCredentials("basic", username="alice", password="pa:ss")
    assert creds.check(basic("alice", "pa:ss"), None) == "basic user alice"
    for wrong in (basic("alice", "pa:s"), basic("alic", "pa:ss"), basic("", ""),
                  b"Basic " + base64.b64encode(b"alice"), b"Basic !!!notbase64",
                  b"Bearer " + base64.b64encode(b"alice:pa:ss"), None):
        assert creds.check(wrong, None) is None, wrong


def test_api_key_takes_the_token_or_an_admin_key_from_the_key_store() -> None:
    seen: list[bytes] = []

    def key_check(key: bytes) -> str | None:
        seen.append(key)
        return "key-7" if key == b"sk-admin-scope" else None

    creds = AdminCredentials("api_key", token="tok", key_check=key_check)
    assert creds.check(None, b"tok") == "api key"
    assert creds.check(None, b"sk-admin-scope") == "api key key-7"
    assert creds.check(None, b"sk-other") is None
    assert creds.check(b"Bearer tok", None) is None  # only X-API-Key
    assert seen == [b"sk-admin-scope", b"sk-other"]
    assert AdminCredentials("api_key", token="tok").check(None, b"sk-admin-scope") is None


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        AdminCredentials("digest")


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[bytes, bytes]]]:
    """Every comparison the module makes, recorded."""
    made: list[tuple[bytes, bytes]] = []
    real = credentials.hmac.compare_digest

    def record(a: bytes, b: bytes) -> bool:
        made.append((a, b))
        return real(a, b)

    monkeypatch.setattr(credentials.hmac, "compare_digest", record)
    yield made


@pytest.mark.parametrize("guess", [b"", b"s", b"s3cret-toke", b"x" * 10000, b"s3cret-token"])
def test_every_comparison_is_on_digests_whatever_the_guess(
    comparisons: list[tuple[bytes, bytes]], guess: bytes
) -> None:
    AdminCredentials("bearer_token", token="s3cret-token").check(b"Bearer " + guess, None)
    AdminCredentials("api_key", token="s3cret-token").check(None, guess)
    assert len(comparisons) == 2
    assert all(len(a) == len(b) == 32 for a, b in comparisons)


def test_basic_compares_user_and_password_even_when_the_user_is_wrong(
    comparisons: list[tuple[bytes, bytes]]
) -> None:
    AdminCredentials("basic", username="alice", password="pw").check(basic("mallory", "x"),
                                                                      None)
    assert len(comparisons) == 2
