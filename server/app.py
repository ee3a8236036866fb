"""The composition root: ``create_app(settings)`` wires the pieces; it decides nothing."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from .agents.registry import AgentRegistry
from .backends import open_backend
from .config import Settings
from .transports import http, sse
from .transports.common import NoAuth, error_response, exception_handlers
from .transports.openapi import Api, serve_document
from .transports.socketio import SocketIOTransport


def _viewer_dir() -> Path | None:
    """The viewer: inside the installed package (a wheel), else the checkout's static/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "static", here.parent / "static"):
        if (candidate / "index.html").is_file():
            return candidate
    return None


STATIC_DIR = _viewer_dir()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("thoughtstream")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


async def _http_error(request: Any, exc: Exception) -> Any:
    """Unknown paths and methods answer in the API's one error shape, not plain text."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


def create_app(settings: Settings | None = None, registry: AgentRegistry | None = None) -> Starlette:
    settings = settings or Settings()
    # Load agents now, not in the lifespan, so a bad --agent fails before serving.
    registry = registry or AgentRegistry.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_backend(settings, registry) as backend:
            app.state.bus = backend.bus
            app.state.runs = backend.service
            app.state.backend = backend
            try:
                yield
            finally:
                await sockets.aclose()  # watches hold bus subscriptions: stop them first

    # Socket.IO at /socket.io/ (HTTP long-polling and WebSocket); everything else is Starlette's.
    sockets = SocketIOTransport(settings)
    api = Api("thoughtstream", _version(),
              overrides={"SubmitRequest": http.submit_schema(registry.describe())})
    routes: list[Any] = [api.operation(endpoint, op) for endpoint, op in (*http.operations, *sse.operations)]
    routes += [serve_document(api), Mount("/socket.io", app=sockets.asgi, name="socket.io")]
    if STATIC_DIR is not None:
        routes.append(Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static"))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={**exception_handlers(), HTTPException: _http_error})
    app.state.settings = settings
    app.state.identity = NoAuth()  # who is calling: credentials plug in here
    app.state.registry = registry
    app.state.sockets = sockets
    sockets.state = app.state  # runs and bus are read from it once the lifespan has set them
    return app
