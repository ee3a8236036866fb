"""Load-generator capacity check: a bare asyncio server that blasts pre-encoded SSE frames.

    python -m bench.blaster --port P --clients N --count 5000 --per-write 20

No ASGI, no per-client Python work beyond writing shared pre-built bytes: once all N
clients are connected it sends each of them ``count`` THOUGHT frames (``per-write``
frames per HTTP chunk, like a server batching) and a terminal STATUS frame, as fast
as the sockets take them. What the load generator then reports as delivered/s is
(close to) its own ceiling, which must sit well above what the servers deliver.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

from .graphs import token

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def build(count: int, per_write: int) -> list[bytes]:
    ts = time.time()
    frames = []
    for i in range(count):
        body = orjson.dumps({"run_id": "blast", "seq": i + 1, "ns": "THOUGHT", "agent": "emit",
                             "data": {"text": token(i)}, "ts": ts})
        frames.append(b"id: %d\nevent: THOUGHT\ndata: %s\n\n" % (i + 1, body))
    end = orjson.dumps({"run_id": "blast", "seq": count + 1, "ns": "STATUS", "agent": "server",
                        "data": {"state": "succeeded"}, "ts": ts})
    frames.append(b"id: %d\nevent: STATUS\ndata: %s\n\n" % (count + 1, end))
    return [chunk(b"".join(frames[i:i + per_write])) for i in range(0, len(frames), per_write)]


async def serve(port: int, clients: int, count: int, per_write: int) -> None:
    writers: list[asyncio.StreamWriter] = []
    all_in = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + chunk(b"retry: 2000\n\n"))
        writers.append(writer)
        if len(writers) >= clients:
            all_in.set()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    print("LISTENING", flush=True)
    async with server:
        await all_in.wait()
        await asyncio.sleep(0.2)  # let the clients report READY first
        pieces = build(count, per_write)
        for i, piece in enumerate(pieces):  # round-robin, so every client is served all along
            for w in writers:
                w.write(piece)
            if i % 64 == 63:  # drain rarely: the blaster must cost less than the client
                await asyncio.gather(*(w.drain() for w in writers))
        for w in writers:
            w.write(b"0\r\n\r\n")
            await w.drain()
            w.close()
        await asyncio.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--per-write", type=int, default=20)
    args = p.parse_args()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - depends on the machine
        runner = asyncio.run
    runner(serve(args.port, args.clients, args.count, args.per_write))


if __name__ == "__main__":
    main()
