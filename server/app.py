"""The composition root: ``create_app(settings)`` wires the pieces; it decides nothing."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from .agents.registry import AgentRegistry
from .backends import open_backend
from .config import Settings
from .observability import Metrics, MetricsView
from .observability.endpoint import metrics_port
from .observability.live import LiveRates
from .runs.fair import TenantPolicy
from .transports import contexts, http, sse
from .transports.agent_protocol import Tasks as ProtocolTasks
from .transports.agent_protocol import routes as agent_protocol
from .auth import from_settings as authenticator_from_settings
from .transports.common import error_response, exception_handlers
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


def cors(settings: Settings) -> Middleware:
    """Browsers on other origins (agent-chat-ui, a useStream app) may call the API: the same
    origins Socket.IO admits; the headers the LangGraph SDKs send and read are allowed and
    exposed (``Last-Event-ID`` and ``X-Api-Key`` in, ``Content-Location`` and ``Location`` out)."""
    from starlette.middleware.cors import CORSMiddleware

    from .transports.sio_protocol import OriginPolicy

    policy = OriginPolicy(settings.allowed_origins)

    class OriginCors(CORSMiddleware):
        def is_allowed_origin(self, origin: str) -> bool:
            return policy(origin)

    return Middleware(OriginCors, allow_origins=[], allow_credentials=False,
                      allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                      allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Api-Key",
                                     "Idempotency-Key", "If-None-Match"],
                      expose_headers=["Content-Location", "Location", "Retry-After", "ETag"])


def create_app(settings: Settings | None = None, registry: AgentRegistry | None = None) -> Starlette:
    settings = settings or Settings()
    # Load agents now, not in the lifespan, so a bad --agent fails before serving.
    registry = registry or AgentRegistry.from_settings(settings)
    identity = authenticator_from_settings(settings)  # likewise a bad key or keys file
    TenantPolicy.from_settings(settings)  # and tenant limits that do not parse

    metrics = Metrics.from_settings(settings, "api")  # this process's; the backend counts into it

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_backend(settings, registry, metrics=metrics) as backend:
            app.state.bus = backend.bus
            app.state.runs = backend.service
            app.state.backend = backend
            app.state.threads = backend.threads
            assert backend.auth is not None and backend.overview is not None
            await identity.bind(backend.auth)
            app.state.metrics_view = view = MetricsView(metrics, backend.overview, backend.metric_peers)
            try:
                async with metrics_port(settings.host, settings.metrics_port, view):
                    yield
            finally:
                await sockets.aclose()  # watches hold bus subscriptions: stop them first
                await app.state.lg_tasks.aclose()

    # Socket.IO at /socket.io/ (HTTP long-polling and WebSocket); everything else is Starlette's.
    sockets = SocketIOTransport(settings, metrics=metrics)
    api = Api("thoughtstream", _version(),
              overrides={"SubmitRequest": http.submit_schema(registry.describe())})
    routes: list[Any] = [api.operation(endpoint, op) for endpoint, op in
                         (*http.operations, *sse.operations, *contexts.operations, *agent_protocol.operations)]
    routes += [serve_document(api), Mount("/socket.io", app=sockets.asgi, name="socket.io")]
    if STATIC_DIR is not None:
        routes.append(Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static"))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[cors(settings)],
                    exception_handlers={**exception_handlers(), HTTPException: _http_error})
    app.state.settings = settings
    app.state.identity = identity  # who is calling: every door asks it
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.live_rates = LiveRates(metrics)  # the Operations tab's events/s and lag p99
    app.state.sockets = sockets
    app.state.lg_tasks = ProtocolTasks()
    sockets.state = app.state  # runs and bus are read from it once the lifespan has set them
    return app
