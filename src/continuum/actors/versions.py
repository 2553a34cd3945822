"""Config versions: the last 100 configs a router ran with, and where they are kept.

A router alone keeps them in memory (:class:`MemoryVersions`). The workers of
``server.workers: N`` share one store, a file in their private directory
(:class:`SharedVersions`), so every worker applies the same versions in the same order and
any worker answers ``GET /admin/config/history`` alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Final, Protocol, final

import msgspec
import trio

from ..config import Config

#: How many versions are kept (the reference router keeps 100).
HISTORY: Final = 100
#: How often a worker waiting for the shared store's lock tries again.
_LOCK_RETRY: Final = 0.02


class ConfigVersion(msgspec.Struct, frozen=True):
    """One version: the config in force from ``time`` on (its effective config: a change
    that needs a restart is not in it), why it came, and what changed."""

    version: int
    time: float  # time.time()
    source: str  # "start", "SIGHUP", "file change", "PUT /admin/config", "rollback to v3", ...
    who: str
    summary: str
    config: Config
    needs_restart: tuple[str, ...] = ()


class VersionStore(Protocol):
    """Where versions are kept. Writers hold :meth:`exclusive` from reading the latest
    version to appending the next one, so two changes never get the same number."""

    def exclusive(self) -> AbstractAsyncContextManager[None]: ...

    def latest(self) -> ConfigVersion: ...

    def get(self, version: int) -> ConfigVersion | None: ...

    def history(self) -> list[ConfigVersion]:
        """Oldest first, at most :data:`HISTORY`."""
        ...

    def append(self, entry: ConfigVersion) -> None: ...


@final
class MemoryVersions:
    """One router's versions, in memory."""

    def __init__(self, first: ConfigVersion) -> None:
        self._versions: deque[ConfigVersion] = deque([first], maxlen=HISTORY)
        self._lock = trio.Lock()

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        return self._lock

    def latest(self) -> ConfigVersion:
        return self._versions[-1]

    def get(self, version: int) -> ConfigVersion | None:
        return next((v for v in self._versions if v.version == version), None)

    def history(self) -> list[ConfigVersion]:
        return list(self._versions)

    def append(self, entry: ConfigVersion) -> None:
        self._versions.append(entry)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[ConfigVersion]).decode


@final
class SharedVersions:
    """Versions shared by the workers of one parent: ``versions.json`` in their private
    directory (mode 0700: it holds the configs, secrets included), replaced whole by a
    rename, under ``versions.lock`` (``flock``) for writers."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "versions.json")
        self._lock_path = os.path.join(directory, "versions.lock")
        self._local = trio.Lock()  # one writer per process; flock orders the processes
        self._cache: tuple[tuple[int, int, int], list[ConfigVersion]] | None = None

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        return self._exclusive()

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        async with self._local:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                    await trio.sleep(_LOCK_RETRY)
                yield
            finally:
                os.close(fd)  # releases the lock

    def stamp(self) -> tuple[int, int, int] | None:
        """The file's (inode, mtime, size), or None when there is none yet: a cheap look
        for whether another worker wrote a version (each write is a new file)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> list[ConfigVersion]:
        stamp = self.stamp()
        if stamp is None:
            return []
        cache = self._cache
        if cache is not None and cache[0] == stamp:
            return cache[1]
        with open(self.path, "rb") as f:
            versions = _decode(f.read())
        self._cache = (stamp, versions)
        return versions

    def exists(self) -> bool:
        return self.stamp() is not None

    def latest(self) -> ConfigVersion:
        return self._read()[-1]

    def get(self, version: int) -> ConfigVersion | None:
        return next((v for v in self._read() if v.version == version), None)

    def history(self) -> list[ConfigVersion]:
        return list(self._read())

    def append(self, entry: ConfigVersion) -> None:
        versions = [*self._read(), entry][-HISTORY:]
        temporary = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_encode(versions))
        os.replace(temporary, self.path)
        self._cache = None
