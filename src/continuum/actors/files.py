"""The router's Files API (``/v1/files``) and the file resolution of chat and Responses
requests, over files kept in a local directory (``files.storage: local``).

Layout: ``<directory>/<id>.bin`` (the content) and ``<id>.json`` (its
:class:`~continuum.apis.files.FileMeta`), each written under a temporary name first and
renamed into place, so a reader never sees half a file, and every router pointed at the
same directory (a shared volume) serves the same files. An id must match a strict pattern
before it reaches the file system: no path can be smuggled in. Uploads are streamed to disk
as they arrive (bounded by ``files.max_file_size``); the totals (``max_total_size``,
``max_files``) are this router's count, refreshed from the directory by the sweeper, which
also deletes expired files. Disk work runs in worker threads.

With ``api_keys.mode: blocking`` a file belongs to the key that uploaded it (a digest of
the key is recorded): other keys neither see nor read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import msgspec
import trio

from ..apis.files import (
    PURPOSES,
    FileMeta,
    Inlined,
    clean_filename,
    file_references,
    inline_files,
    inline_message_files,
    media_type,
    message_file_references,
    message_refusal,
    new_file_id,
    valid_file_id,
)
from ..apis.listing import list_page, page_query
from ..apis.types import TranslationError
from ..config import FilesConfig
from ..core.endpoints import MESSAGES
from ..core.errors import JSON_HEADERS, RouterError, quoted
from ..core.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    form_boundary,
)
from ..net.server.connection import BodyStream, Request, ServerConnection
from .access import client_key
from .proxy import RequestState

if TYPE_CHECKING:
    from .ingress import Route

log = logging.getLogger("continuum.files")

FILES: Final = "/v1/files"
_PREFIX: Final = "/v1/files/"
_CONTENT: Final = "/content"
#: Disk writes are batched to this size (one thread hop each).
_WRITE_BATCH: Final = 1024 * 1024
_READ_CHUNK: Final = 256 * 1024
_FIELD_LIMIT: Final = 4096
_SWEEP_MAX: Final = 60.0
#: A partial upload older than this is a leftover (a crash): the sweeper deletes it.
_STALE_UPLOAD: Final = 3600.0

_encode = msgspec.json.Encoder().encode
_decode_meta = msgspec.json.Decoder(FileMeta).decode


def _not_found(file_id: str) -> RouterError:
    return RouterError(404, f"No such File object: {quoted(file_id)}", param="id",
                       code="not_found")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@final
class FileWriter:
    """One upload being written to a temporary file (see :meth:`LocalFileStore.writer`)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        #: The first bytes (for the media type).
        self.head = b""
        self._file: Any = None  # a trio file, opened by the first write
        self._buffer: list[bytes] = []
        self._buffered = 0

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise RouterError(413, f"File too large: at most {self.limit} bytes "
                              "(files.max_file_size)", param="file")
        if len(self.head) < 16:
            self.head = (self.head + data)[:16]
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= _WRITE_BATCH:
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if self._file is None:
            self._file = await trio.open_file(self.path, "wb")
        await self._file.write(data)

    async def close(self) -> None:
        await self.flush()
        if self._file is None:  # an empty file
            self._file = await trio.open_file(self.path, "wb")
        await self._file.aclose()

    async def discard(self) -> None:
        with trio.CancelScope(shield=True):
            if self._file is not None:
                await self._file.aclose()
            await trio.to_thread.run_sync(_unlink, self.path)


@final
class LocalFileStore:
    """Files in one directory (see the module docstring)."""

    def __init__(self, config: FilesConfig) -> None:
        self.config = config
        self.directory = Path(config.directory)
        #: Bytes and files held, as last counted (and kept up to date by this router).
        self.used = 0
        self.count = 0

    # -- paths (only for ids that passed valid_file_id) -------------------------------

    def _content(self, file_id: str) -> Path:
        return self.directory / f"{file_id}.bin"

    def _meta(self, file_id: str) -> Path:
        return self.directory / f"{file_id}.json"

    # -- upkeep ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory and count what it holds."""
        await trio.to_thread.run_sync(
            lambda: self.directory.mkdir(parents=True, exist_ok=True))
        await self.sweep()

    def _scan(self) -> list[FileMeta]:
        metas = []
        for entry in os.scandir(self.directory):
            name = entry.name
            if not name.endswith(".json") or not valid_file_id(name[:-5]):
                continue
            try:
                metas.append(_decode_meta(Path(entry.path).read_bytes()))
            except (OSError, msgspec.DecodeError):
                continue
        return metas

    def _remove(self, file_id: str) -> None:
        _unlink(self._meta(file_id))
        _unlink(self._content(file_id))

    async def sweep(self) -> int:
        """Delete expired files and leftover partial uploads, and recount; returns how
        many files were deleted."""

        def work() -> tuple[int, int, int]:
            now = time.time()
            removed = used = count = 0
            for meta in self._scan():
                if meta.expires_at is not None and meta.expires_at <= now:
                    self._remove(meta.id)
                    removed += 1
                    continue
                used += meta.bytes
                count += 1
            for entry in os.scandir(self.directory):
                if entry.name.startswith(".upload-"):
                    with contextlib.suppress(OSError):
                        if now - entry.stat().st_mtime > _STALE_UPLOAD:
                            os.unlink(entry.path)
            return removed, used, count

        removed, self.used, self.count = await trio.to_thread.run_sync(work)
        return removed

    async def run(self) -> None:
        """The sweeper: expired files go within a minute (sooner with a short TTL)."""
        ttl = self.config.ttl
        period = min(_SWEEP_MAX, ttl / 4) if ttl > 0 else _SWEEP_MAX
        while True:
            await trio.sleep(max(period, 0.05))
            removed = await self.sweep()
            if removed:
                log.info("files: %d expired file(s) deleted", removed)

    # -- files -------------------------------------------------------------------------

    def writer(self) -> FileWriter:
        """Where an upload goes before :meth:`place` puts it under its id."""
        path = self.directory / f".upload-{os.urandom(8).hex()}"
        return FileWriter(path, self.config.max_file_size)

    async def place(self, writer: FileWriter, meta: FileMeta) -> None:
        """Keep a written upload as ``meta.id`` (content first, so the metadata that makes
        it visible never points at nothing)."""
        await writer.close()
        tmp = self.directory / f".upload-{os.urandom(8).hex()}.json"

        def work() -> None:
            tmp.write_bytes(_encode(meta))
            os.replace(writer.path, self._content(meta.id))
            os.replace(tmp, self._meta(meta.id))

        await trio.to_thread.run_sync(work)
        self.used += meta.bytes
        self.count += 1

    async def get(self, file_id: str) -> FileMeta | None:
        if not valid_file_id(file_id):
            return None

        def read() -> FileMeta | None:
            try:
                return _decode_meta(self._meta(file_id).read_bytes())
            except (OSError, msgspec.DecodeError):
                return None

        meta = await trio.to_thread.run_sync(read)
        if meta is not None and meta.expires_at is not None and meta.expires_at <= time.time():
            return None
        return meta

    async def list(self) -> list[FileMeta]:
        now = time.time()
        metas = await trio.to_thread.run_sync(self._scan)
        return sorted((m for m in metas if m.expires_at is None or m.expires_at > now),
                      key=lambda m: (m.created_at, m.id))

    async def delete(self, meta: FileMeta) -> None:
        await trio.to_thread.run_sync(self._remove, meta.id)
        self.used = max(0, self.used - meta.bytes)
        self.count = max(0, self.count - 1)

    async def read(self, meta: FileMeta) -> bytes:
        try:
            return await trio.to_thread.run_sync(self._content(meta.id).read_bytes)
        except OSError:
            raise _not_found(meta.id) from None

    async def send(self, meta: FileMeta, conn: ServerConnection) -> None:
        """Send the content as a chunked answer, a piece at a time."""
        try:
            f = await trio.open_file(self._content(meta.id), "rb")
        except OSError:
            raise _not_found(meta.id) from None
        async with f:
            await conn.start_chunked(200, [
                (b"content-type", meta.media_type.encode()),
                (b"content-disposition",
                 b'attachment; filename="%s"' % meta.filename.replace('"', "").encode()),
            ])
            while data := await f.read(_READ_CHUNK):
                await conn.send_chunk(data)
            await conn.end_chunked()


def _owner(request: Request, blocking: bool) -> str:
    """Who a file belongs to: a digest of the client's key in blocking mode, else ""."""
    if not blocking:
        return ""
    key = client_key(request) or b""
    return hashlib.sha256(key).hexdigest()[:24]


@final
class FilesFront:
    """The handlers of ``/v1/files`` and ``/v1/files/{id}[/content]``, and the resolver
    of file references in requests."""

    def __init__(self, store: LocalFileStore, *, blocking: bool) -> None:
        self.store = store
        self._config = store.config
        self._blocking = blocking

    def routes(self) -> dict[str, tuple[str, Route]]:
        return {FILES: ("GET, POST", self.files)}

    def match(self, path: str) -> tuple[str, Route, str] | None:
        if not path.startswith(_PREFIX):
            return None
        rest = path[len(_PREFIX):]
        if rest.endswith(_CONTENT) and rest.count("/") == 1:
            return "GET", self.content, "/v1/files/{id}/content"
        if rest and "/" not in rest:
            return "GET, DELETE", self.file, "/v1/files/{id}"
        return None

    async def _owned(self, request: Request, file_id: str) -> FileMeta:
        meta = await self.store.get(file_id)
        if meta is None or meta.owner != _owner(request, self._blocking):
            raise _not_found(file_id)
        return meta

    # -- handlers ----------------------------------------------------------------------

    async def files(self, request: Request, conn: ServerConnection,
                    state: RequestState) -> None:
        if request.method == "POST":
            meta = await self._upload(request)
            await conn.send_response(200, JSON_HEADERS, _encode(meta.object()))
            return
        try:
            page = page_query(request.query, default_limit=10000, max_limit=10000)
        except TranslationError as exc:
            raise RouterError(400, exc.message, param=exc.param) from None
        purpose = page.extra.get("purpose")
        owner = _owner(request, self._blocking)
        metas = [m for m in await self.store.list()
                 if m.owner == owner and (purpose is None or m.purpose == purpose)]
        await conn.send_response(200, JSON_HEADERS, _encode(
            list_page([m.object() for m in metas], page)))

    async def file(self, request: Request, conn: ServerConnection,
                   state: RequestState) -> None:
        file_id = request.path[len(_PREFIX):]
        meta = await self._owned(request, file_id)
        if request.method == "DELETE":
            await self.store.delete(meta)
            body = {"id": file_id, "object": "file", "deleted": True}
            await conn.send_response(200, JSON_HEADERS, _encode(body))
            return
        await conn.send_response(200, JSON_HEADERS, _encode(meta.object()))

    async def content(self, request: Request, conn: ServerConnection,
                      state: RequestState) -> None:
        meta = await self._owned(request, request.path[len(_PREFIX):-len(_CONTENT)])
        await self.store.send(meta, conn)

    # -- upload ------------------------------------------------------------------------

    async def _upload(self, request: Request) -> FileMeta:
        stream = request.body_stream
        boundary = form_boundary(request.header(b"content-type"))
        if stream is None or boundary is None:
            raise RouterError(400, "Upload a file as multipart/form-data with the fields "
                              "'file' and 'purpose'")
        config, store = self._config, self.store
        if stream.length is not None and stream.length > config.max_file_size + 65536:
            raise RouterError(413, f"File too large: at most {config.max_file_size} bytes "
                              "(files.max_file_size)", param="file")
        if store.count >= config.max_files:
            raise RouterError(413, f"The router holds {store.count} files, its limit "
                              "(files.max_files): delete some first", code="files_limit")
        writer = store.writer()
        try:
            fields, filename = await self._read_form(stream, boundary, writer)
            if filename is None:
                raise RouterError(400, "You must provide a 'file'", param="file")
            purpose = fields.get("purpose")
            if purpose not in PURPOSES:
                raise RouterError(400, f"'purpose' must be one of {', '.join(sorted(PURPOSES))}",
                                  param="purpose")
            if store.used + writer.size > config.max_total_size:
                raise RouterError(413, "The router's file storage is full "
                                  "(files.max_total_size): delete some files first",
                                  code="files_limit")
            meta = FileMeta(
                id=new_file_id(), bytes=writer.size, created_at=int(time.time()),
                filename=filename, purpose=purpose,
                media_type=media_type(writer.head, filename),
                expires_at=self._expiry(fields), owner=_owner(request, self._blocking))
            await store.place(writer, meta)
        except BaseException:
            await writer.discard()
            raise
        return meta

    async def _read_form(self, stream: BodyStream, boundary: bytes, writer: FileWriter
                         ) -> tuple[dict[str, str], str | None]:
        """The form's text fields, and the file part (written through ``writer``)."""
        parser = MultipartParser(boundary)
        fields: dict[str, str] = {}
        filename: str | None = None
        current: str | None = None  # the field being read; "" for the file
        value = b""
        try:
            while data := await stream.receive_some():
                for event in parser.feed(data):
                    if isinstance(event, PartStart):
                        if event.name == "file" and event.filename is not None:
                            if filename is not None:
                                raise RouterError(400, "Only one 'file' per upload",
                                                  param="file")
                            filename = clean_filename(event.filename)
                            current = ""
                        else:
                            current, value = event.name, b""
                    elif isinstance(event, PartData):
                        if current == "":
                            await writer.write(event.data)
                        elif len(value) + len(event.data) <= _FIELD_LIMIT:
                            value += event.data
                    elif isinstance(event, PartEnd) and current:
                        fields[current] = value.decode("utf-8", "replace")
                        current = None
            parser.end()
        except MultipartError as exc:
            raise RouterError(exc.status, f"Malformed multipart form: {exc.message}") from None
        return fields, filename

    def _expiry(self, fields: dict[str, str]) -> int | None:
        """``expires_after[seconds]`` (anchored at creation), else ``files.ttl``."""
        now = int(time.time())
        seconds = fields.get("expires_after[seconds]")
        if seconds is not None:
            if not seconds.isdigit() or not 3600 <= int(seconds) <= 2592000:
                raise RouterError(400, "expires_after[seconds] must be from 3600 to 2592000",
                                  param="expires_after")
            return now + int(seconds)
        ttl = self._config.ttl
        return now + max(1, int(ttl)) if ttl > 0 else None

    # -- resolution --------------------------------------------------------------------

    async def resolve(self, request: Request) -> None:
        """Inline the stored files a chat, Responses or Messages request references (its
        body is replaced); references the router does not hold stay as they are."""
        if request.path == MESSAGES:
            await self._resolve_messages(request)
            return
        found = file_references(request.body)
        if found is None:
            return
        parsed, references = found
        owner = _owner(request, self._blocking)
        total = 0
        inlined: dict[str, Inlined] = {}
        for file_id in references:
            meta = await self.store.get(file_id)
            if meta is None or meta.owner != owner:
                continue
            total += meta.bytes
            self._within_budget(total)
            inlined[file_id] = Inlined.of(meta, await self.store.read(meta))
        if inlined:
            request.body = inline_files(parsed, references, inlined.get)

    async def _resolve_messages(self, request: Request) -> None:
        found = message_file_references(request.body)
        if found is None:
            return
        parsed, references = found
        owner = _owner(request, self._blocking)
        held: dict[str, FileMeta] = {}
        for file_id, blocks in references.items():
            meta = await self.store.get(file_id)
            if meta is None or meta.owner != owner:
                continue
            refusal = message_refusal(meta)
            if refusal is not None:
                where = blocks[0][0]
                raise RouterError(400, f"{where}: {refusal}", param=where)
            held[file_id] = meta
        if not held:
            return
        self._within_budget(sum(meta.bytes for meta in held.values()))
        contents = {file_id: (meta, await self.store.read(meta))
                    for file_id, meta in held.items()}
        request.body = inline_message_files(parsed, references, contents.get)

    def _within_budget(self, size: int) -> None:
        limit = self._config.max_resolved_size
        if size > limit:
            raise RouterError(413, "The files this request references are larger than "
                              f"files.max_resolved_size ({limit} bytes)",
                              code="files_too_large")
