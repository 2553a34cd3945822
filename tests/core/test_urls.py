"""The URL cleaners: what each keeps and drops, for its audience."""

from __future__ import annotations

import pytest

import continuum
from continuum.config import ConfigError
from continuum.config._text import mask_url
from continuum.core.urls import UNPARSABLE, mask_secrets, origin_and_path, without_userinfo

SECRET = "s3cret"


@pytest.mark.parametrize(("url", "masked"), [
    ("http://u:s3cret@host:8080/v1?x=1#f", "http://u:***@host:8080/v1?x=1#f"),
    ("http://:s3cret@host", "http://:***@host"),
    ("http://u:@host/", "http://u:***@host/"),
    ("redis://u:s3cret@[::1]:6379/0", "redis://u:***@[::1]:6379/0"),
    ("http://u:s3cret@MyHost/Path", "http://u:***@MyHost/Path"),
    # An @ in the password: the last one ends the user info.
    ("http://u:p@ss@host/x", "http://u:***@host/x"),
    # A user name alone is usually a token: masked too.
    ("http://u@host/v1", "http://***@host/v1"),
    ("https://sk-abc@host", "https://***@host"),
    # Query values whose name sounds secret; the others and the fragment stay.
    ("http://host:8080/v1?key=1", "http://host:8080/v1?key=***"),
    ("http://u:s3cret@host/v1?x=1&api_key=s3cret&Access%5FToken=s3cret#key=f",
     "http://u:***@host/v1?x=1&api_key=***&Access%5FToken=***#key=f"),
    ("http://host/v1?keyless&x=", "http://host/v1?keyless&x="),
    ("http://host/v1#?key=frag", "http://host/v1#?key=frag"),
    # An @ after the authority is not user info.
    ("http://host/a:b@c", "http://host/a:b@c"),
    ("http://host?u:p@x", "http://host?u:p@x"),
    ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
    ("not a url", "not a url"),
    ("", ""),
    # Unparsable URLs are masked too.
    ("http://u:s3cret@host:badport/v1", "http://u:***@host:badport/v1"),
    ("http://u:s3cret@[::1/v1", "http://u:***@[::1/v1"),
    ("http://u:s3cret@host:badport/v1?token=s3cret", "http://u:***@host:badport/v1?token=***"),
])
def test_mask_secrets(url: str, masked: str) -> None:
    assert mask_secrets(url, "***") == masked
    assert mask_url(url) == masked
    assert mask_url(masked) == masked  # masking twice changes nothing: a masked URL matches


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:s3cret@host:8080/v1?x=1#f", "http://host:8080/v1?x=1#f"),
    ("http://u@host/v1", "http://host/v1"),
    ("http://:s3cret@host", "http://host"),
    ("https://u:s3cret@[2001:db8::1]:443/v1", "https://[2001:db8::1]:443/v1"),
    ("http://host:8080/v1?key=1", "http://host:8080/v1?key=***"),
    ("http://host:8080/v1?x=1&signature=s3cret#f", "http://host:8080/v1?x=1&signature=***#f"),
    ("http://host:8080/v1?x=1", "http://host:8080/v1?x=1"),
    ("http://[::1]:8000", "http://[::1]:8000"),
    ("http://u:s3cret@host:badport/v1", UNPARSABLE),
    ("http://u:s3cret@[::1/v1", UNPARSABLE),
])
def test_without_userinfo(url: str, shown: str) -> None:
    assert without_userinfo(url) == shown


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:s3cret@host:8080/v1?key=s3cret#s3cret", "http://host:8080/v1"),
    ("https://[2001:db8::1]:443/v1beta?key=s3cret", "https://[2001:db8::1]:443/v1beta"),
    ("http://u@[::1]/", "http://[::1]/"),
    ("http://host", "http://host"),
    ("http://u:s3cret@host:badport/v1", UNPARSABLE),
    ("http://u:s3cret@[::1/v1", UNPARSABLE),
])
def test_origin_and_path(url: str, shown: str) -> None:
    assert origin_and_path(url) == shown


@pytest.mark.parametrize("url", [
    "http://user:s3cret@host:badport/v1",  # the port fails to parse
    "http://user:s3cret@[::1:80/v1",  # the IPv6 bracket is never closed
    "ftp://user:s3cret@host/v1",
])
def test_a_bad_backend_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        continuum.config_from_dict({"backends": [
            {"name": "a", "type": "vllm", "url": url, "models": ["m"]}]})
    assert SECRET not in str(caught.value)
    assert "user:***@" in str(caught.value)
