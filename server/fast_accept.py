"""uvloop, with asyncio's batched accept for TCP listeners (``serve`` runs uvicorn on it).

libuv accepts one connection per event-loop iteration (libuv PR #3696: rely on
level-triggered polling for the next one). When the loop is busy — 1,000 runs streaming
tokens, each iteration taking 100+ ms — new connections wait in the kernel's accept
queue at one per iteration: in the bench's ``cores`` scenario 850 of 1,000 POSTs sat
there, draining at ~5/s, and time to first token reached 40 s. asyncio's own loop
accepts up to ``backlog`` connections per wake-up (bpo-27906); this loop does the same
for the plain TCP listeners uvicorn asks for and keeps uvloop for everything else
(TLS and Unix sockets go through uvloop's own server unchanged).

Used as uvicorn's loop factory: ``uvicorn.run(..., loop="server.fast_accept:new_event_loop")``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any, Callable

import uvloop

log = logging.getLogger(__name__)

# Accepts per wake-up of the listening socket, as asyncio's loop does up to its backlog.
ACCEPT_BATCH = 1024
# accept() failures that leave the listener fine (the connection went, or fds ran out for a
# moment): log and wait for the next wake-up, as asyncio's loop does.
TRANSIENT = {errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EPROTO}


class _Listener:
    """The part of ``asyncio.Server`` uvicorn uses: ``sockets``, ``close``, ``wait_closed``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 factory: Callable[[], asyncio.Protocol]) -> None:
        self._loop, self._sock, self._factory = loop, sock, factory
        self._closed = False
        self._pending: set[asyncio.Task[Any]] = set()
        loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else (self._sock,)

    def is_serving(self) -> bool:
        return not self._closed

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in TRANSIENT:
                    log.warning("accept failed: %s", exc)
                    return
                raise
            conn.setblocking(False)
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
            self._pending.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("accepted connection could not be set up: %r", task.exception())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


class BatchAcceptLoop(uvloop.Loop):  # type: ignore[misc]
    async def create_server(self, protocol_factory: Callable[[], asyncio.Protocol], host: Any = None,
                            port: Any = None, *, sock: socket.socket | None = None, backlog: int = 100,
                            ssl: Any = None, **kwargs: Any) -> Any:
        plain = ssl is None and not kwargs and (
            (sock is None and isinstance(host, str) and port is not None)
            or (sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)))
        if not plain:
            return await super().create_server(protocol_factory, host, port, sock=sock, backlog=backlog,
                                               ssl=ssl, **kwargs)
        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family, backlog=backlog)
        else:
            sock.listen(backlog)
        sock.setblocking(False)
        return _Listener(self, sock, protocol_factory)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return BatchAcceptLoop()
