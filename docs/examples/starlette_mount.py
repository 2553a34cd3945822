"""trio-continuum mounted under /llm inside a Starlette application.

Run it with hypercorn's trio worker (the router runs on trio)::

    CONTINUUM_CONFIG=configs/demo.yaml \\
        hypercorn --worker-class trio docs.examples.starlette_mount:app

then ``curl localhost:8000/llm/v1/models``. Starlette does not pass lifespan events on to
the applications it mounts, so its own lifespan runs the router (``router.running()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from continuum.asgi import create_app

router = create_app()  # the config comes from $CONTINUUM_CONFIG when the router starts


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with router.running():
        yield


async def home(request: Request) -> JSONResponse:
    handle = router.handle
    backends = sorted(handle.backends) if handle is not None else []
    return JSONResponse({"service": "my app", "llm_backends": backends})


app = Starlette(routes=[Route("/", home), Mount("/llm", app=router)], lifespan=lifespan)
