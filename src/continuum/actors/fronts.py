"""The API surfaces beside plain proxying, built for one router: uploads and binary
answers, the Responses API and its store, the Files API. What the supervisor needs of
them: the Ingress routes they add, the paths whose bodies are streamed, their upkeep
tasks, and what to close at the end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import final

import msgspec
import trio

from ..config import Config
from ..core.endpoints import ENDPOINTS, UPLOAD_PATHS
from .conversations import RedisConversationStore, open_store
from .files import FILES, FilesFront, LocalFileStore
from .ingress import Route, RouteMatch
from .proxy import Proxy
from .responses import ResponsesFront
from .router import Router
from .uploads import Uploads


@final
class Fronts(msgspec.Struct):
    routes: dict[str, tuple[str, Route]] = msgspec.field(default_factory=dict)
    matches: list[RouteMatch] = msgspec.field(default_factory=list)
    #: Request paths whose multipart bodies reach their handler as they arrive.
    stream_paths: set[str] = msgspec.field(default_factory=set)
    #: Upkeep to run (supervised) while the router runs: (name, task).
    tasks: list[tuple[str, Callable[[], Awaitable[None]]]] = msgspec.field(default_factory=list)
    responses: ResponsesFront | None = None

    async def aclose(self) -> None:
        """Close what holds connections (a shared store's), within a second."""
        store = self.responses.store if self.responses is not None else None
        if isinstance(store, RedisConversationStore):
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await store.aclose()


async def build_fronts(config: Config, proxy: Proxy, router: Router) -> Fronts:
    fronts = Fronts()
    uploads = Uploads(proxy, config.server.max_request_body_size)
    fronts.routes.update({path: ("POST", uploads.handle_upload) for path in UPLOAD_PATHS})
    fronts.routes.update({path: ("POST", uploads.handle_binary)
                          for path, endpoint in ENDPOINTS.items() if endpoint.binary})
    fronts.stream_paths.update(UPLOAD_PATHS)

    responses = fronts.responses = ResponsesFront(proxy, router, open_store(config.responses))
    fronts.routes.update(responses.routes())
    fronts.matches.append(responses.match)

    if config.files.enabled:
        store = LocalFileStore(config.files)
        await store.open()
        files = FilesFront(store, blocking=config.api_keys.mode == "blocking")
        proxy.files = files
        fronts.routes.update(files.routes())
        fronts.matches.append(files.match)
        fronts.stream_paths.add(FILES)
        fronts.tasks.append(("files", store.run))
    return fronts
