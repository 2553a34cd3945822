"""The Files API's wire facts and file resolution (sans-IO).

The router stores uploaded files itself (``files.storage``; the I/O is
``continuum.actors.files``). What lives here: file ids (a strict shape: an id is a file
name on disk, so nothing else may pass), the file object OpenAI's SDKs read, the media type
of a file from its first bytes, and *file resolution*: a chat or Responses request that
references a stored file by ``file_id`` gets the file's content inlined (a ``data:`` URL),
in the shape the backend accepts, since no backend can read the router's files.

References resolved (others, such as ids of a provider's own Files API, pass untouched):

* chat ``{"type": "file", "file": {"file_id"}}`` → an ``image_url`` part for an image, else
  ``{"type": "file", "file": {"filename", "file_data"}}`` (a PDF, say);
* chat ``{"type": "image_file", "image_file": {"file_id", "detail"}}`` → ``image_url``;
* Responses ``{"type": "input_image", "file_id"}`` → ``input_image`` with ``image_url``;
* Responses ``{"type": "input_file", "file_id"}`` → ``input_file`` with ``file_data`` (an
  image becomes an ``input_image``);
* Anthropic Messages ``{"type": "image" | "document", "source": {"type": "file", "file_id"}}``
  (in a message's content or a ``tool_result``'s) → the block its media type calls for: an
  image a base64 ``image``, a PDF a base64 ``document``, plain text a ``text`` document; any
  other media type is refused (400 naming the block), as Anthropic takes no other.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec

JSON = dict[str, Any]

#: What the router's file ids look like: exactly this, so an id is always a safe file name.
FILE_ID: Final = re.compile(r"file-[A-Za-z0-9]{16,64}")
#: ``purpose`` values OpenAI's Files API takes.
PURPOSES: Final = frozenset(
    {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
#: The byte that starts every id the router makes (a quick scan before decoding a body).
REFERENCE_MARK: Final = b'"file-'

_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)
_EXTENSIONS: Final = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
    "webp": "image/webp", "pdf": "application/pdf", "txt": "text/plain",
    "md": "text/markdown", "json": "application/json", "csv": "text/csv",
    "jsonl": "application/jsonl", "html": "text/html",
}
_UNSAFE_NAME: Final = re.compile(r"[\x00-\x1f\x7f/\\]")


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def valid_file_id(value: str) -> bool:
    return FILE_ID.fullmatch(value) is not None


def media_type(head: bytes, filename: str) -> str:
    """A file's media type: from its first bytes where they tell, else its name's
    extension, else ``application/octet-stream``."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    ext = filename.rpartition(".")[2].lower() if "." in filename else ""
    return _EXTENSIONS.get(ext, "application/octet-stream")


def clean_filename(name: str | None) -> str:
    """The name a file is listed under: its last path segment, no control characters."""
    base = re.split(r"[/\\]", name or "")[-1]
    return _UNSAFE_NAME.sub("", base)[:255] or "upload"


class FileMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What the router records of a stored file (its sidecar on disk)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    media_type: str
    expires_at: int | None = None
    #: Who may see it: a digest of the client's key in ``blocking`` mode, else "".
    owner: str = ""

    def object(self) -> JSON:
        """The file object of OpenAI's API."""
        return {"id": self.id, "object": "file", "bytes": self.bytes,
                "created_at": self.created_at, "expires_at": self.expires_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "status_details": None}


class Inlined(msgspec.Struct, frozen=True):
    """A stored file's content, ready to inline: a ``data:`` URL and what it is."""

    meta: FileMeta
    data_url: str

    @classmethod
    def of(cls, meta: FileMeta, content: bytes) -> Inlined:
        return cls(meta, f"data:{meta.media_type};base64,"
                         + base64.b64encode(content).decode("ascii"))

    @property
    def image(self) -> bool:
        return self.meta.media_type.startswith("image/")


# -- file resolution ---------------------------------------------------------------------

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _parts(root: object) -> Iterator[JSON]:
    """Every object under ``root`` (the ``messages`` or ``input`` of a request)."""
    stack = [root]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            yield value
            stack.extend(v for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, dict | list))


def _reference(part: JSON) -> str | None:
    """The router file id a content part refers to, or None."""
    kind = part.get("type")
    holder: object = part
    if kind == "file":
        holder = part.get("file")
    elif kind == "image_file":
        holder = part.get("image_file")
    elif kind not in ("input_image", "input_file"):
        return None
    ident = holder.get("file_id") if isinstance(holder, dict) else None
    return ident if isinstance(ident, str) and valid_file_id(ident) else None


def _referencing(body: bytes) -> JSON | None:
    """The decoded request when its bytes may name a router file id (a byte search first:
    most requests are never decoded), else None."""
    if REFERENCE_MARK not in body:
        return None
    try:
        request = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return request if isinstance(request, dict) else None


def file_references(body: bytes) -> tuple[JSON, dict[str, list[JSON]]] | None:
    """The decoded request and its parts that reference router file ids (by id), or None
    when it references none."""
    request = _referencing(body)
    if request is None:
        return None
    found: dict[str, list[JSON]] = {}
    for key in ("messages", "input"):
        for part in _parts(request.get(key)):
            ident = _reference(part)
            if ident is not None:
                found.setdefault(ident, []).append(part)
    return (request, found) if found else None


def _rewrite(part: JSON, file: Inlined) -> None:
    kind = part.get("type")
    name = file.meta.filename
    if kind in ("file", "image_file"):
        holder = part.get(kind)
        detail = holder.get("detail") if isinstance(holder, dict) else None
        part.clear()
        if file.image:
            image: JSON = {"url": file.data_url}
            if detail is not None:
                image["detail"] = detail
            part.update({"type": "image_url", "image_url": image})
        else:
            part.update({"type": "file", "file": {"filename": name, "file_data": file.data_url}})
        return
    detail = part.get("detail")
    part.clear()
    if file.image:
        part.update({"type": "input_image", "image_url": file.data_url,
                     "detail": detail if detail is not None else "auto"})
    else:
        part.update({"type": "input_file", "filename": name, "file_data": file.data_url})


def inline_files(request: JSON, references: dict[str, list[JSON]],
                 lookup: Callable[[str], Inlined | None]) -> bytes:
    """The request with every reference ``lookup`` knows replaced by its content."""
    for ident, parts in references.items():
        file = lookup(ident)
        if file is None:
            continue
        for part in parts:
            _rewrite(part, file)
    return _encode(request)


# -- Anthropic Messages ------------------------------------------------------------------

#: Where a file-sourced block sits in a Messages request (``messages[0].content[1]``), and
#: the block itself.
Located = tuple[str, JSON]

_MESSAGE_KINDS: Final = ("image", "document")


def _message_reference(block: object) -> str | None:
    """The router file id an Anthropic ``image`` / ``document`` block's source names."""
    if not isinstance(block, dict) or block.get("type") not in _MESSAGE_KINDS:
        return None
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "file":
        return None
    ident = source.get("file_id")
    return ident if isinstance(ident, str) and valid_file_id(ident) else None


def message_file_references(body: bytes) -> tuple[JSON, dict[str, list[Located]]] | None:
    """The decoded Messages request and its blocks that reference router file ids (by id,
    each with where it is), or None when it references none. Blocks are looked for where
    Anthropic takes them: a message's content and a ``tool_result``'s content."""
    request = _referencing(body)
    if request is None or not isinstance(messages := request.get("messages"), list):
        return None
    found: dict[str, list[Located]] = {}

    def visit(blocks: object, where: str) -> None:
        if not isinstance(blocks, list):
            return
        for j, block in enumerate(blocks):
            here = f"{where}[{j}]"
            ident = _message_reference(block)
            if ident is not None:
                found.setdefault(ident, []).append((here, block))
            elif isinstance(block, dict) and block.get("type") == "tool_result":
                visit(block.get("content"), here + ".content")

    for i, message in enumerate(messages):
        if isinstance(message, dict):
            visit(message.get("content"), f"messages[{i}].content")
    return (request, found) if found else None


def message_refusal(meta: FileMeta) -> str | None:
    """Why a stored file cannot be inlined into an Anthropic request, or None when it can
    (checked before its content is read)."""
    kind = meta.media_type
    if kind.startswith("image/") or kind in ("application/pdf", "text/plain"):
        return None
    return (f"file {meta.id} is {kind}: Anthropic messages take images, PDFs and plain "
            "text only")


def _message_block(old: JSON, meta: FileMeta, content: bytes) -> JSON:
    kind = meta.media_type
    block: JSON
    if kind == "text/plain":
        block = {"type": "document", "source": {
            "type": "text", "media_type": kind, "data": content.decode("utf-8", "replace")}}
    else:
        block = {"type": "image" if kind.startswith("image/") else "document", "source": {
            "type": "base64", "media_type": kind,
            "data": base64.b64encode(content).decode("ascii")}}
    # What the client said of the block stays (a document's title, context, citations only
    # on a document).
    for key, value in old.items():
        if key not in ("type", "source") and (
                key == "cache_control" or block["type"] == "document"):
            block[key] = value
    return block


def inline_message_files(request: JSON, references: dict[str, list[Located]],
                         lookup: Callable[[str], tuple[FileMeta, bytes] | None]) -> bytes:
    """The Messages request with every block whose file ``lookup`` knows replaced by one
    carrying the file (the caller checked each with :func:`message_refusal`)."""
    for ident, blocks in references.items():
        held = lookup(ident)
        if held is None:
            continue
        meta, content = held
        for _, block in blocks:
            new = _message_block(block, meta, content)
            block.clear()
            block.update(new)
    return _encode(request)
