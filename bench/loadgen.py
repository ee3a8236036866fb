"""SSE load generator: N clients on raw asyncio sockets, one process, one event loop.

Started by the driver (``bench.procs.LoadGen``), never in a server's process:

    python -m bench.loadgen --url http://127.0.0.1:PORT/runs/ID/events --clients 50 --out /tmp/x
    python -m bench.loadgen --create http://.../runs --body '{...}' --clients 50 --spread 2 --out /tmp/x
    python -m bench.loadgen --url ... --clients 1000 --idle

Modes: *watch* (``--url``, repeatable: client i uses the i-th URL modulo their number)
GETs a stream; *create* (``--create``) has every client POST its own run first (spread
over ``--spread`` seconds, like arriving users) and then GET the ``events_url`` of the
answer, or, with ``--stream-in-response``, read the POST's own response as the stream
(``langgraph dev``'s ``/runs/stream``); *idle* only connects and holds.

Protocol with the parent, on stdout: ``READY <epoch> <n ok>`` once every client has its
response headers (watch, idle) or has started (create), then ``DONE`` once every stream
ended (terminal STATUS, or the server ended the body) or the timeout hit; idle clients
hold until stdin closes. Results: ``<out>.json`` (per-client summaries) and ``<out>.bin``
(float64 triplets ``i, t, recv`` of every token, client after client; the summaries'
``tokens`` split it). Tokens are found by ``"i":N,"t":T`` in any target's framing.

Raw sockets, not httpx: the client must not be the bottleneck. While the stream flows
a read costs one clock sample, HTTP/1.1 de-chunking and keeping the complete frames'
bytes; parsing waits until the stream ends or the buffer passes ``PARSE_AFTER_BYTES``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from urllib.parse import urlsplit

from .clients import Client, finish_run, hold_until_stdin_closes, open_all, runner

TERMINAL = re.compile(rb'"state":"(?:succeeded|failed|cancelled)"')


def request(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return host, port, (head + "\r\n").encode() + body


class SSEClient(Client):
    """One streamed HTTP response: keeps complete frames per read, parses them later."""

    def __init__(self, req: bytes) -> None:
        super().__init__(req)
        self.head = b""
        self.headers_done = False
        self.raw = b""  # undecoded chunked bytes
        self.chunk_left = 0  # bytes left in the current chunk, its trailing CRLF included
        self.body = b""  # de-chunked bytes after the last complete frame

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.reads += 1
        if not self.headers_done:
            data = self._headers(data)
            if not data:
                return
        self._dechunk(data)
        body = self.body
        cut = max(body.rfind(b"\n\n") + 2, body.rfind(b"\n\r\n") + 3, 0)
        if cut >= 2:
            complete, self.body = body[:cut], body[cut:]
            self.keep(now, complete)
            if b"STATUS" in complete and TERMINAL.search(complete):
                self._end()

    def _headers(self, data: bytes) -> bytes:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self.head[:end], self.head[end + 4:]
        self.headers_done = True
        status = int(head.split(b" ", 2)[1])
        if status != 200 or b"chunked" not in head.lower():
            self.error = f"bad response: {head[:300]!r} {rest[:300]!r}"
            self.transport.close()
            return b""
        if not self.ready.done():
            self.ready.set_result(True)
        return rest

    def _dechunk(self, data: bytes) -> None:
        raw = self.raw + data if self.raw else data
        pos, n, out = 0, len(raw), []
        while pos < n:
            if self.chunk_left == 0:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(raw[pos:eol], 16)
                pos = eol + 2
                if size == 0:  # last chunk: the server ended the stream
                    self._end()
                    pos = n
                    break
                self.chunk_left = size + 2
            take = min(self.chunk_left, n - pos)
            payload = min(take, self.chunk_left - 2)
            if payload > 0:
                out.append(raw[pos:pos + payload])
            self.chunk_left -= take
            pos += take
        self.raw = raw[pos:] if pos < n else b""
        if out:
            self.body = self.body + b"".join(out) if self.body else b"".join(out)

    def _end(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()
        self._finish()


async def create_then_stream(client: SSEClient, create_url: str, body: bytes, delay: float,
                             in_response: bool) -> None:
    """POST a run (after ``delay``), then stream it: the answer's events_url, or the answer itself."""
    await asyncio.sleep(delay)
    client.started = time.time()
    loop = asyncio.get_running_loop()
    host, port, req = request("POST", create_url, body)
    if in_response:
        client.req = req
        await loop.create_connection(lambda: client, host, port)
        return
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    answer = json.loads(await reader.readexactly(length))
    writer.close()
    if not head.startswith(b"HTTP/1.1 20"):
        client.error = f"create refused: {head[:100]!r} {answer}"
        client._finish()
        return
    base = urlsplit(create_url)
    host, port, client.req = request("GET", f"{base.scheme}://{base.netloc}{answer['events_url']}")
    await loop.create_connection(lambda: client, host, port)


async def run(args: argparse.Namespace) -> None:
    headers = {"Last-Event-ID": args.last_event_id} if args.last_event_id is not None else None
    if args.create:
        clients = [SSEClient(b"") for _ in range(args.clients)]
        body = args.body.encode()
        starts = [asyncio.create_task(create_then_stream(
            c, args.create, body, k * args.spread / args.clients, args.stream_in_response))
            for k, c in enumerate(clients)]
        print(f"READY {time.time():.6f} {len(clients)}", flush=True)
    else:
        targets = [request("GET", u, headers=headers) for u in args.url]
        clients = [SSEClient(targets[k % len(targets)][2]) for k in range(args.clients)]
        await open_all(clients, [t[:2] for t in targets])
        oks = await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), 120)
        print(f"READY {time.time():.6f} {sum(oks)}", flush=True)
        starts = []
    if args.idle:
        await hold_until_stdin_closes(clients)
        return
    await finish_run(clients, args.timeout, args.out, starts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", action="append", default=[], help="stream URL (repeatable: round-robin)")
    p.add_argument("--create", help="POST here per client, then stream the run")
    p.add_argument("--body", default="{}", help="JSON body of --create")
    p.add_argument("--stream-in-response", action="store_true", help="the POST's answer is the stream")
    p.add_argument("--spread", type=float, default=0.0, help="seconds over which --create clients start")
    p.add_argument("--last-event-id", help="send this Last-Event-ID header (watch mode)")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", help="results path prefix (.json and .bin are added)")
    p.add_argument("--idle", action="store_true", help="connect, then hold until stdin closes")
    args = p.parse_args()
    if bool(args.url) == bool(args.create):
        p.error("give --url or --create")
    runner(run(args), args.clients)


if __name__ == "__main__":
    main()
