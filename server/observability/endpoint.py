"""``--metrics-port``: ``/metrics`` alone, without auth, on a port of its own.

For a Prometheus that cannot hold an admin credential: the port is meant to be reachable
from the monitoring network only, which is why it binds the same host as the API and is
off unless asked for. It serves the very same view as the API's admin-only ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import AsyncIterator, Generator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .exposition import CONTENT_TYPE, MetricsView

log = logging.getLogger(__name__)


def metrics_app(view: MetricsView) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(await view.render(), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])


@contextlib.asynccontextmanager
async def metrics_port(host: str, port: int | None, view: MetricsView) -> AsyncIterator[None]:
    """Serve ``view`` on ``host:port`` while inside (nothing when ``port`` is None)."""
    if port is None:
        yield
        return
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # The API's own server handles SIGTERM/SIGINT and ends the lifespan, which
            # stops this one; two servers taking the handlers would fight over them.
            yield

    # Bound here, not by uvicorn: a port in use then fails the start with its OSError,
    # where uvicorn would sys.exit inside a task.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    # Config() configures logging process-wide: with no log_config, no level and access_log
    # left on, it changes nothing (access_log=False would silence the API's access log too).
    config = uvicorn.Config(metrics_app(view), lifespan="off", log_config=None, log_level=None)
    server = Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="metrics-port")
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # raises what stopped it
        log.info("metrics on http://%s:%d/metrics (no auth)", host, port)
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):  # a timeout cancels it; either way it is over
            await asyncio.wait_for(task, 5)
        sock.close()
