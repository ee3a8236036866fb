"""The composition root: ``create_app(settings)`` wires the pieces; it decides nothing."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from .agents.registry import AgentRegistry
from .backends import open_backend
from .bus.base import BackendUnavailable
from .transports.errors import error_response
from .config import Settings
from .transports import http, sse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


async def _backend_unavailable(request: Any, exc: Exception) -> Any:
    return error_response(503, "backend_unavailable", str(exc), headers={"Retry-After": "2"})


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
            yield

    routes: list[Any] = [*http.routes, *sse.routes]
    if STATIC_DIR.is_dir():
        routes.append(Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static"))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={BackendUnavailable: _backend_unavailable})
    app.state.settings = settings
    app.state.registry = registry
    return app
