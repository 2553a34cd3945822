"""Sans-IO half of the mock's non-chat OpenAI endpoints: moderations, images, audio and
rerank. Deterministic answers, so tests can assert them:

* ``/v1/moderations`` flags an input that contains a word of :data:`FLAGGED_WORDS`;
* ``/v1/images/generations`` draws a small PNG whose colour follows the prompt; edits and
  variations (multipart) answer the same, their ``revised_prompt`` naming the uploaded
  image's size and SHA-256 (so a test knows the bytes arrived whole);
* ``/v1/audio/speech`` answers bytes that :func:`speech_bytes` computes from the request
  (a test compares them byte for byte); ``input: "bytes:N"`` asks for exactly N bytes;
* ``/v1/audio/transcriptions`` and ``/translations`` answer
  ``"transcribed N bytes sha256 <hex>"`` for the uploaded file, in each ``response_format``
  and as events with ``stream=true``;
* ``/v1/rerank`` scores documents by the words they share with the query.

Uploads are summarised as they are read (:class:`FormSummary`): fields kept, files hashed
and counted, never held.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from ..core.multipart import MultipartParser, PartData, PartEnd, PartStart
from ._openai import _BadRequest, _check_model, _decode, _ModelNotFound, error_reply, sse_event
from ._replies import Reply, Settings, StreamReply, count_tokens, json_reply

_encode: Final = msgspec.json.Encoder().encode

#: Words that make the mock moderation flag an input (category ``violence``).
FLAGGED_WORDS: Final = frozenset({"kill", "attack", "violence"})
MODERATION_CATEGORIES: Final = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
SPEECH_FORMATS: Final = {
    "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
    "wav": "audio/wav", "pcm": "audio/pcm",
}
#: Pieces a binary answer is sent in.
CHUNK: Final = 65536
_MAX_SPEECH: Final = 1 << 31
_FIELD_LIMIT: Final = 65536
_SIZE_REQUEST: Final = re.compile(r"bytes:(\d{1,10})")


@dataclass(frozen=True, slots=True)
class BinaryReply:
    """A binary answer sent chunked, :data:`CHUNK` bytes at a time, as it is produced."""

    content_type: bytes
    size: int
    chunks: Iterator[bytes]


# -- forms -------------------------------------------------------------------------------


@dataclass(slots=True)
class UploadedFile:
    filename: str | None
    content_type: str | None
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


@dataclass(slots=True)
class FormSummary:
    """What an upload form held: its text fields, and each file's size and digest."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)


class FormReader:
    """Feeds a form through the multipart parser into a :class:`FormSummary`."""

    def __init__(self, boundary: bytes) -> None:
        self._parser = MultipartParser(boundary)
        self.summary = FormSummary()
        self._name = ""
        self._file: UploadedFile | None = None
        self._value = bytearray()

    def feed(self, data: bytes) -> None:
        for event in self._parser.feed(data):
            if isinstance(event, PartStart):
                self._name = event.name
                self._value.clear()
                self._file = None
                if event.filename is not None:
                    self._file = UploadedFile(event.filename, event.content_type)
                    self.summary.files[event.name] = self._file
            elif isinstance(event, PartData):
                if self._file is not None:
                    self._file.size += len(event.data)
                    self._file.digest.update(event.data)
                elif len(self._value) + len(event.data) <= _FIELD_LIMIT:
                    self._value += event.data
            elif isinstance(event, PartEnd) and self._file is None:
                self.summary.fields[self._name] = self._value.decode("utf-8", "replace")

    def end(self) -> FormSummary:
        self._parser.end()
        return self.summary


# -- moderations -------------------------------------------------------------------------


class _ModerationRequest(msgspec.Struct):
    input: object = None
    model: str | None = None


def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        out = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                out.append(item["text"])
            elif isinstance(item, dict) and item.get("type") == "image_url":
                out.append("")
            else:
                raise _BadRequest("'input' items must be strings or content parts.", "input")
        return out
    raise _BadRequest("'input' must be a string or a non-empty array.", "input")


def moderations(body: bytes, settings: Settings) -> Reply:
    """``POST /v1/moderations``."""
    try:
        req = _decode(body, _ModerationRequest)
        model = _check_model(req.model or settings.models[0], settings.models)
        texts = _texts(req.input)
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    results = []
    for text in texts:
        flagged = bool(FLAGGED_WORDS & set(re.findall(r"[a-z]+", text.lower())))
        categories = {c: flagged and c == "violence" for c in MODERATION_CATEGORIES}
        scores = {c: (0.97 if categories[c] else 0.001) for c in MODERATION_CATEGORIES}
        results.append({
            "flagged": flagged, "categories": categories, "category_scores": scores,
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
        })
    return json_reply({"id": f"modr-{settings.ident}", "model": model, "results": results})


# -- images ------------------------------------------------------------------------------


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


def image_for(prompt: str) -> bytes:
    """The mock's picture of ``prompt``: 8x8, coloured by its hash."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return png(8, 8, (digest[0], digest[1], digest[2]))


class _ImageRequest(msgspec.Struct):
    model: str | None = None
    prompt: str | None = None
    n: int | None = None
    response_format: str | None = None
    size: str | None = None


def _image_answer(model: str, prompts: Sequence[str], response_format: str | None,
                  settings: Settings) -> Reply:
    if response_format not in (None, "b64_json", "url"):
        return error_reply(400, "'response_format' must be 'url' or 'b64_json'.",
                           param="response_format")
    data = []
    for prompt in prompts:
        image = image_for(prompt)
        entry: dict[str, object] = {"revised_prompt": prompt}
        if response_format == "url":
            entry["url"] = "data:image/png;base64," + base64.b64encode(image).decode()
        else:
            entry["b64_json"] = base64.b64encode(image).decode()
        data.append(entry)
    tokens = sum(count_tokens(p) for p in prompts)
    return json_reply({"created": settings.created, "data": data,
                       "usage": {"input_tokens": tokens, "output_tokens": 64 * len(prompts),
                                 "total_tokens": tokens + 64 * len(prompts)},
                       "model": model})


def _count(n: int | None) -> int:
    if n is None:
        return 1
    if not 1 <= n <= 10:
        raise _BadRequest("'n' must be between 1 and 10.", "n")
    return n


def image_generation(body: bytes, settings: Settings) -> Reply:
    """``POST /v1/images/generations``."""
    try:
        req = _decode(body, _ImageRequest)
        model = _check_model(req.model, settings.models)
        if not req.prompt:
            raise _BadRequest("You must provide a prompt.", "prompt")
        n = _count(req.n)
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    return _image_answer(model, [req.prompt] * n, req.response_format, settings)


def image_upload(path: str, form: FormSummary, settings: Settings) -> Reply:
    """``POST /v1/images/edits`` and ``/variations`` (multipart)."""
    fields = form.fields
    try:
        model = _check_model(fields.get("model"), settings.models)
        image = form.files.get("image") or form.files.get("image[]")
        if image is None:
            raise _BadRequest("You must provide an image file.", "image")
        n = _count(int(fields["n"]) if fields.get("n", "").isdigit() else None)
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    kind = "variation" if path.endswith("variations") else "edit"
    described = (f"{kind} of {image.size} bytes sha256 {image.sha256}: "
                 f"{fields.get('prompt', '')}").rstrip(": ")
    return _image_answer(model, [described] * n, fields.get("response_format"), settings)


# -- speech ------------------------------------------------------------------------------


class _SpeechRequest(msgspec.Struct):
    model: str | None = None
    input: str | None = None
    voice: object = None
    response_format: str | None = None
    stream_format: str | None = None


def speech_size(text: str) -> int:
    """How many bytes the mock's speech of ``text`` has."""
    match = _SIZE_REQUEST.fullmatch(text.strip())
    if match is not None:
        return min(int(match.group(1)), _MAX_SPEECH)
    return max(1024, 400 * len(text.encode()))


def iter_speech(model: str, text: str, voice: str, fmt: str) -> Iterator[bytes]:
    """The mock's speech, :data:`CHUNK` bytes at a time (deterministic: each piece is seeded
    by the request and its index)."""
    size = speech_size(text)
    seed = hashlib.sha256(f"{model}\0{text}\0{voice}\0{fmt}".encode()).digest()
    index = 0
    while size > 0:
        piece = min(CHUNK, size)
        rng = random.Random(seed + index.to_bytes(8, "big"))
        yield rng.randbytes(piece)
        size -= piece
        index += 1


def speech_bytes(model: str, text: str, voice: str = "alloy", fmt: str = "mp3") -> bytes:
    """What ``POST /v1/audio/speech`` answers for this request (see the module docstring)."""
    return b"".join(iter_speech(model, text, voice, fmt))


def speech(body: bytes, settings: Settings) -> Reply | StreamReply | BinaryReply:
    """``POST /v1/audio/speech``: bytes, or ``speech.audio.*`` events (``stream_format:
    sse``)."""
    try:
        req = _decode(body, _SpeechRequest)
        model = _check_model(req.model, settings.models)
        if not req.input:
            raise _BadRequest("You must provide an input.", "input")
        fmt = req.response_format or "mp3"
        if fmt not in SPEECH_FORMATS:
            raise _BadRequest(f"'response_format' must be one of {', '.join(SPEECH_FORMATS)}.",
                              "response_format")
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    voice = req.voice if isinstance(req.voice, str) else "custom"
    chunks = iter_speech(model, req.input, voice, fmt)
    if req.stream_format == "sse":
        events = [(0.0, sse_event({"type": "speech.audio.delta",
                                   "audio": base64.b64encode(c).decode()})) for c in chunks]
        tokens = count_tokens(req.input)
        events.append((0.0, sse_event({"type": "speech.audio.done", "usage": {
            "input_tokens": tokens, "output_tokens": len(events),
            "total_tokens": tokens + len(events)}})))
        return StreamReply(tuple(events))
    return BinaryReply(SPEECH_FORMATS[fmt].encode(), speech_size(req.input), chunks)


# -- transcriptions ----------------------------------------------------------------------


def transcript_text(path: str, file: UploadedFile) -> str:
    """The mock's transcript of an uploaded file."""
    verb = "translated" if path.endswith("translations") else "transcribed"
    return f"{verb} {file.size} bytes sha256 {file.sha256}"


def transcription(path: str, form: FormSummary, settings: Settings) -> Reply | StreamReply:
    """``POST /v1/audio/transcriptions`` and ``/translations`` (multipart)."""
    fields = form.fields
    try:
        _check_model(fields.get("model"), settings.models)
        file = form.files.get("file")
        if file is None:
            raise _BadRequest("You must provide a file.", "file")
        fmt = fields.get("response_format", "json")
        if fmt not in ("json", "text", "verbose_json", "srt", "vtt"):
            raise _BadRequest("'response_format' is not supported.", "response_format")
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    text = transcript_text(path, file)
    tokens = count_tokens(text)
    usage = {"type": "tokens", "input_tokens": file.size // 1000 + 1,
             "output_tokens": tokens, "total_tokens": file.size // 1000 + 1 + tokens}
    if fields.get("stream") == "true":
        words = text.split(" ")
        events = [(0.0, sse_event({"type": "transcript.text.delta",
                                   "delta": w if i == 0 else " " + w}))
                  for i, w in enumerate(words)]
        events.append((0.0, sse_event({"type": "transcript.text.done", "text": text,
                                       "usage": usage})))
        return StreamReply(tuple(events))
    if fmt == "text":
        return Reply(200, text.encode() + b"\n", ((b"content-type", b"text/plain"),))
    if fmt in ("srt", "vtt"):
        head = "WEBVTT\n\n" if fmt == "vtt" else "1\n"
        return Reply(200, f"{head}00:00:00.000 --> 00:00:01.000\n{text}\n".encode(),
                     ((b"content-type", b"text/plain"),))
    if fmt == "verbose_json":
        return json_reply({"task": path.rsplit("/", 1)[-1][:-1], "language": "english",
                           "duration": 1.0, "text": text, "segments": [], "usage": usage})
    return json_reply({"text": text, "usage": usage})


# -- rerank ------------------------------------------------------------------------------


class _RerankRequest(msgspec.Struct):
    model: str | None = None
    query: str | None = None
    documents: list[object] | None = None
    top_n: int | None = None
    return_documents: bool | None = None


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def rerank(body: bytes, settings: Settings) -> Reply:
    """``POST /v1/rerank`` (the Jina/Cohere shape vLLM serves)."""
    try:
        req = _decode(body, _RerankRequest)
        model = _check_model(req.model, settings.models)
        if not req.query or not req.documents:
            raise _BadRequest("You must provide a query and documents.", "documents")
        docs = []
        for doc in req.documents:
            text = doc if isinstance(doc, str) else (
                doc.get("text") if isinstance(doc, dict) else None)
            if not isinstance(text, str):
                raise _BadRequest("Documents must be strings or {text} objects.", "documents")
            docs.append(text)
    except (_BadRequest, _ModelNotFound) as exc:
        return exc.reply
    query = _words(req.query)
    ranked = sorted(
        ((round(len(query & _words(text)) / (len(query | _words(text)) or 1), 6), index)
         for index, text in enumerate(docs)),
        key=lambda pair: (-pair[0], pair[1]))
    if req.top_n is not None:
        ranked = ranked[:max(req.top_n, 0)]
    scored = []
    for score, index in ranked:
        entry: dict[str, object] = {"index": index, "relevance_score": score}
        if req.return_documents is not False:
            entry["document"] = {"text": docs[index]}
        scored.append(entry)
    tokens = count_tokens(req.query) + sum(count_tokens(d) for d in docs)
    return json_reply({"id": f"rerank-{settings.ident}", "model": model,
                       "usage": {"total_tokens": tokens}, "results": scored})
