"""server/fast_accept.py: a burst of connections is accepted in a few loop iterations, not one
connection per iteration (libuv's way, which left 850 POSTs in the kernel's accept queue
while 1,000 runs streamed); a closed listener stops accepting."""

from __future__ import annotations

import asyncio
import socket

from server.fast_accept import BatchAcceptLoop, new_event_loop

N = 50


def test_a_burst_is_accepted_in_a_few_iterations_and_close_stops_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, BatchAcceptLoop)
        accepted: list[int] = []
        iterations = 0

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.append(iterations)

            def data_received(self, data: bytes) -> None:
                pass

        server = await loop.create_server(Proto, "127.0.0.1", 0, backlog=2048)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(N)]  # all queued
        while len(accepted) < N and iterations < 10 * N:
            iterations += 1
            await asyncio.sleep(0)
        assert len(accepted) == N
        assert max(accepted) <= 5, accepted  # one per iteration would need N of them
        server.close()
        await server.wait_closed()
        assert server.sockets == ()
        for c in clients:
            c.close()
        try:  # nobody listens there any more
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            raise AssertionError("the closed listener still accepts")
        except ConnectionRefusedError:
            pass

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_unix_sockets_still_go_through_uvloop(tmp_path) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, str(tmp_path / "s"))
        assert server.sockets
        server.close()

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
