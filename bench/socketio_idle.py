"""Idle connections for the memory benchmark: N SSE streams or N Socket.IO sockets watching one quiet run.

    python -m bench.socketio_idle --transport sse|socketio --url http://127.0.0.1:PORT --run-id ID --clients 1000

Prints ``READY <epoch> <n>`` once every connection is established (SSE: first body
bytes received, so the server has attached the subscriber; Socket.IO: ``subscribe``
acked), then holds them until stdin closes and prints ``DONE``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from array import array
from urllib.parse import urlsplit

from .socketio_loadgen import SioClient, open_all, raise_fd_limit


class SSEIdleClient(asyncio.Protocol):
    def __init__(self, request: bytes, ready: asyncio.Future) -> None:
        self.request = request
        self.ready = ready
        self.head = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.ready.done():
            return  # pings; nothing else comes on a quiet run
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end >= 0:
            ok = self.head.startswith(b"HTTP/1.1 200") and len(self.head) > end + 4
            if ok or not self.head.startswith(b"HTTP/1.1 200"):
                self.ready.set_result(ok)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)


async def run(transport: str, url: str, run_id: str, clients: int) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    if transport == "sse":
        request = (f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   f"Accept: text/event-stream\r\n\r\n").encode()
        protos: list = [SSEIdleClient(request, loop.create_future()) for _ in range(clients)]
    else:
        samples = array("d")
        protos = [SioClient(host, port, run_id, samples, loop.create_future(), loop.create_future(), idle=True)
                  for _ in range(clients)]
    await open_all(loop, protos, host, port)
    oks = await asyncio.wait_for(asyncio.gather(*(p.ready for p in protos)), 120)
    print(f"READY {time.time():.6f} {sum(oks)}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for p in protos:
        if isinstance(p, SioClient):
            p.ended = True
        if p.transport is not None:
            p.transport.close()
    print("DONE", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--transport", choices=["sse", "socketio"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--clients", type=int, default=1000)
    args = p.parse_args()
    raise_fd_limit(args.clients + 64)
    try:
        asyncio.run(run(args.transport, args.url, args.run_id, args.clients))
    except Exception as exc:  # report to the parent instead of hanging it
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
