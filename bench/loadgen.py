"""SSE load generator: N clients on raw asyncio sockets, one process, one event loop.

Run by ``bench.fanout`` as a separate process (never in the server's process):

    python -m bench.loadgen --url http://127.0.0.1:PORT/runs/ID/events --clients 50 --out /tmp/x

``--url`` may be repeated (one run watched through several API processes): client i
connects to the i-th URL modulo their number.

Protocol with the parent, on stdout: ``READY <epoch>`` once every client has its
response headers and first body bytes (so the server has attached the subscriber),
then ``DONE`` once every client has seen the terminal event (or the timeout hit).
Results go to ``<out>.json`` (per-client counts and checks) and ``<out>.bin`` (an
array of float64 pairs ``ts, recv`` for every THOUGHT event: the server's append
time and this process's receive time, both ``time.time()`` on the same machine).

Raw sockets, not httpx/aiohttp: the client must not be the bottleneck. While the
stream flows, a read costs one clock sample (the receive time of every event in
it), HTTP/1.1 de-chunking, and keeping the complete frames' bytes; parsing them
(seq order, ns, ts) waits until the buffered bytes pass ``PARSE_AFTER_BYTES`` or
the stream ends, so it mostly happens outside the measured window. Only the
terminal event is looked for at once (a C-level substring search per read).
``bench.fanout`` measures this client's ceiling with ``bench/blaster.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from array import array
from urllib.parse import urlsplit

# One complete frame with an id: its seq, ns and the data's top-level ts (the last "ts"
# key: thoughtstream encodes ts last). Starting with a literal lets the regex engine
# skip ahead with a fast search instead of trying every byte.
FRAME = re.compile(rb'id: (\d+)\nevent: ([^\n]*)\ndata: [^\n]*"ts":([-+.0-9eE]+)[^\n]*\n')
TERMINAL_RE = re.compile(rb'event: STATUS\ndata: [^\n]*"state":"(?:succeeded|failed|cancelled)"')
PARSE_AFTER_BYTES = 8 << 20  # per client: bounds memory on very long runs


class SSEClient(asyncio.Protocol):
    """One GET of an SSE stream: keeps complete frames per read, parses them later."""

    def __init__(self, request: bytes, ready: asyncio.Future, done: asyncio.Future) -> None:
        self.request = request
        self.ready = ready
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.headers_done = False
        self.raw = b""  # undecoded chunked bytes
        self.chunk_left = 0  # bytes left in the current chunk, its trailing CRLF included
        self.body = b""  # de-chunked bytes after the last complete frame
        self.pending: list[tuple[float, bytes]] = []  # (receive time, complete frames)
        self.pending_bytes = 0
        self.ts = array("d")  # server append time of each THOUGHT event
        self.recv = array("d")  # and its receive time
        self.events = 0
        self.thoughts = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.violations = 0
        self.ended = False
        self.error: str | None = None
        self.reads = 0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended and self.error is None:
            self.error = f"connection lost before the terminal event: {exc!r}"
        self._finish()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.reads += 1
        if not self.headers_done:
            data = self._headers(data)
            if not data:
                return
        self._dechunk(data)
        if self.body and not self.ready.done():
            self.ready.set_result(True)
        body = self.body
        cut = body.rfind(b"\n\n")
        if cut < 0:
            return
        complete, self.body = body[:cut + 2], body[cut + 2:]
        self.pending.append((now, complete))
        self.pending_bytes += len(complete)
        if b"event: STATUS" in complete and TERMINAL_RE.search(complete):
            self.ended = True
            self.transport.close()
            self._finish()
        elif self.pending_bytes > PARSE_AFTER_BYTES:
            self.parse_pending()

    # -- wire

    def _headers(self, data: bytes) -> bytes:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self.head[:end], self.head[end + 4:]
        self.headers_done = True
        status = int(head.split(b" ", 2)[1])
        if status != 200 or b"chunked" not in head.lower():
            self.error = f"bad response: {head[:200]!r}"
            self.transport.close()
            return b""
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
                    self.transport.close()
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

    def _finish(self) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.done.done():
            self.done.set_result(None)

    # -- parsing, off the hot path

    def parse_pending(self) -> None:
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for now, complete in pending:
            self._parse(now, complete)

    def _parse(self, now: float, complete: bytes) -> None:
        found = FRAME.findall(complete)
        if not found:
            return  # retry, ping comments, a reset notice without an id
        seqs_b, nss, tss = zip(*found)
        n = len(seqs_b)
        seqs = list(map(int, seqs_b))
        if self.last_seq is None:
            self.first_seq = expected = seqs[0]
        else:
            expected = self.last_seq + 1
        if seqs != list(range(expected, expected + n)):  # a gap, a duplicate or disorder
            last = expected - 1
            for seq in seqs:
                self.violations += seq != last + 1
                last = seq
        self.last_seq = seqs[-1]
        self.events += n
        thoughts = nss.count(b"THOUGHT")
        if thoughts == n:
            self.ts.extend(map(float, tss))
        elif thoughts:
            self.ts.extend(float(t) for ns, t in zip(nss, tss) if ns == b"THOUGHT")
        self.thoughts += thoughts
        self.recv.extend([now] * thoughts)

    def pairs(self) -> array:
        """Float64 pairs ts, recv of every THOUGHT event."""
        out = array("d", bytes(16 * len(self.ts)))
        out[0::2] = self.ts
        out[1::2] = self.recv
        return out

    def summary(self) -> dict:
        return {"events": self.events, "thoughts": self.thoughts, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "violations": self.violations, "ended": self.ended,
                "error": self.error, "reads": self.reads}


def target(url: str) -> tuple[str, int, bytes]:
    """Host, port and the GET request of one stream URL."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
               f"Cache-Control: no-cache\r\n\r\n").encode()
    return host, port, request


async def run(url: str | list[str], clients: int, timeout: float, out: str) -> None:
    # Several URLs (e.g. the same run through several API processes): client i uses url i % n.
    targets = [target(u) for u in ([url] if isinstance(url, str) else url)]
    loop = asyncio.get_running_loop()
    conns = [(targets[i % len(targets)], SSEClient(targets[i % len(targets)][2], loop.create_future(),
                                                   loop.create_future())) for i in range(clients)]
    protos = [p for _, p in conns]
    # Open all connections concurrently; the server's accept backlog covers hundreds.
    await asyncio.gather(*(loop.create_connection(lambda p=p: p, host, port)
                           for (host, port, _), p in conns))
    oks = await asyncio.gather(*(p.ready for p in protos))
    print(f"READY {time.time():.6f} {sum(oks)}", flush=True)
    cpu0 = time.process_time()
    try:
        await asyncio.wait_for(asyncio.gather(*(p.done for p in protos)), timeout)
    except TimeoutError:
        for p in protos:
            if not p.ended and p.error is None:
                p.error = f"timeout after {timeout}s"
    cpu_s = time.process_time() - cpu0  # the stream's cost, before the deferred parsing
    for p in protos:
        if p.transport is not None:
            p.transport.close()
        p.parse_pending()
    with open(out + ".bin", "wb") as f:
        for p in protos:
            p.pairs().tofile(f)
    with open(out + ".json", "w") as f:
        json.dump({"clients": [p.summary() for p in protos], "cpu_s": cpu_s,
                   "parse_cpu_s": time.process_time() - cpu0 - cpu_s}, f)
    print("DONE", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, action="append",
                   help="stream URL; repeat it to spread the clients round-robin over several")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", required=True, help="results path prefix (.json and .bin are added)")
    args = p.parse_args()
    try:
        import uvloop  # the loop the servers run on; lower per-read overhead
        runner = uvloop.run
    except ImportError:  # pragma: no cover - depends on the machine
        runner = asyncio.run
    try:
        runner(run(args.url, args.clients, args.timeout, args.out))
    except Exception as exc:  # report to the parent instead of hanging it
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
