"""The incremental multipart/form-data parser: real forms (as httpx encodes them), split at
every byte, and the bounds that make a hostile form cheap."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from continuum.core.multipart import (
    FORM_END,
    Event,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    form_boundary,
)


def encode_form(
    data: dict[str, str], files: dict[str, tuple[str, bytes, str]]
) -> tuple[bytes, bytes]:
    """(content-type, body) exactly as httpx (and so the openai SDK) sends them."""
    request = httpx.Request("POST", "http://x/", data=data, files=files)
    body = request.read()
    return request.headers["content-type"].encode(), body


def collect(events: list[Event]) -> dict[str, tuple[str | None, bytes, int, int]]:
    """name -> (filename, data, data_start, data_end)."""
    out: dict[str, tuple[str | None, bytes, int, int]] = {}
    current: PartStart | None = None
    pieces: list[bytes] = []
    for event in events:
        if isinstance(event, PartStart):
            current, pieces = event, []
        elif isinstance(event, PartData):
            pieces.append(event.data)
        elif isinstance(event, PartEnd):
            assert current is not None
            out[current.name] = (current.filename, b"".join(pieces), current.data_start,
                                 event.data_end)
    return out


def parse_in_pieces(content_type: bytes, body: bytes, cuts: list[int]) -> list[Event]:
    boundary = form_boundary(content_type)
    assert boundary is not None
    parser = MultipartParser(boundary)
    events: list[Event] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(body)]:
        events += parser.feed(body[last:cut])
        last = cut
    parser.end()
    return events


AUDIO = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n" + b"\r" * 50


def test_fields_and_file_with_offsets() -> None:
    ctype, body = encode_form({"model": "whisper-1", "language": "fr"},
                              {"file": ("a.wav", AUDIO, "audio/wav")})
    events = parse_in_pieces(ctype, body, [])
    assert events[-1] is FORM_END
    parts = collect(events)
    assert parts["model"][1] == b"whisper-1"
    assert parts["language"][1] == b"fr"
    assert parts["file"][0] == "a.wav"
    assert parts["file"][1] == AUDIO
    for _, data, start, end in parts.values():
        assert body[start:end] == data  # offsets index the body itself


def test_every_byte_split_gives_the_same_parts() -> None:
    ctype, body = encode_form({"model": "m", "purpose": "vision"},
                              {"file": ("x.bin", AUDIO[:300], "application/octet-stream")})
    whole = collect(parse_in_pieces(ctype, body, []))
    for cut in range(len(body)):
        assert collect(parse_in_pieces(ctype, body, [cut])) == whole


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_random_splits(cuts: list[int]) -> None:
    ctype, body = encode_form({"model": "m" * 30}, {"file": ("f", AUDIO[:1500], "audio/mpeg")})
    assert collect(parse_in_pieces(ctype, body, cuts)) == collect(
        parse_in_pieces(ctype, body, []))


def test_quoted_names_and_escapes() -> None:
    body = (b'--b\r\nContent-Disposition: form-data; name="a b"; filename="q\\"x.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nhello\r\n--b--\r\n")
    events = MultipartParser(b"b").feed(body)
    start = events[0]
    assert isinstance(start, PartStart)
    assert (start.name, start.filename, start.content_type) == ("a b", 'q"x.txt', "text/plain")
    assert events[-1] is FORM_END


@pytest.mark.parametrize("content_type", [
    b"application/json", b"multipart/form-data", b"multipart/form-data; boundary=",
    b"multipart/form-data; boundary=" + b"x" * 300, None,
])
def test_no_usable_boundary(content_type: bytes | None) -> None:
    assert form_boundary(content_type) is None


def test_boundary_forms() -> None:
    assert form_boundary(b'multipart/form-data; boundary="a b"') == b"a b"
    assert form_boundary(b"Multipart/Form-Data; charset=x; BOUNDARY=abc;") == b"abc"


def test_missing_delimiter_refused_after_the_preamble_bound() -> None:
    parser = MultipartParser(b"xyz", max_header_size=1024)
    with pytest.raises(MultipartError):
        for _ in range(100):
            parser.feed(b"a" * 100)


def test_too_many_parts() -> None:
    parser = MultipartParser(b"b", max_parts=10)
    part = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
    with pytest.raises(MultipartError) as err:
        parser.feed(part * 11 + b"--b--")
    assert err.value.status == 413


def test_endless_part_headers() -> None:
    parser = MultipartParser(b"b", max_header_size=2048)
    parser.feed(b"--b\r\nContent-Disposition: form-data; name=")
    with pytest.raises(MultipartError) as err:
        for _ in range(100):
            parser.feed(b"x" * 100)
    assert err.value.status == 413


def test_part_without_name_and_bad_delimiter_line() -> None:
    with pytest.raises(MultipartError):
        MultipartParser(b"b").feed(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--")
    with pytest.raises(MultipartError):
        MultipartParser(b"b").feed(b"--bjunk\r\n")


def test_unterminated_form() -> None:
    parser = MultipartParser(b"b")
    parser.feed(b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\nabc')
    with pytest.raises(MultipartError):
        parser.end()


def test_epilogue_ignored_and_preamble_skipped() -> None:
    body = (b"preamble text\r\n--b\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\nv"
            b"\r\n--b--\r\nepilogue")
    events = MultipartParser(b"b").feed(body)
    assert collect(events)["k"][1] == b"v"
    assert events[-1] is FORM_END
