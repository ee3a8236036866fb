"""What the two load generators (``bench.loadgen``, ``bench.socketio_loadgen``) share.

A client is a ``Client``: an ``asyncio.Protocol`` that sends ``req`` on connect and
keeps ``ready``/``done`` futures, ``ended``/``error`` and ``triplets`` (float64 ``i, t,
recv`` per token). The stdout/file contract with the parent is described in
``bench/loadgen.py``; ``bench.core.Delivery.load`` reads the files back.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from array import array
from typing import Any, Coroutine, Sequence

# Both load generators read a token's index and emit time off the raw bytes and only after
# the stream (or a big buffer): the client's own cost per event must not be what a
# transport comparison measures. Inside a JSON string (a chat model's token content, e.g.
# bench/graphs.py:chat) the quotes arrive escaped, \"i\":N,\"t\":T: each quote after the
# first may follow a backslash. The pattern still starts with a literal ('"i'), which keeps
# re's fast prefix scan: measured on 20k SSE frames it is no slower than the strict one
# (8.4 vs 11.6 ms), where a leading optional backslash made it 10x slower.
TOKEN = re.compile(rb'"i\\?":(\d+),\\?"t\\?":([-+.0-9eE]+)')
PARSE_AFTER_BYTES = 8 << 20
CONNECT_BATCH = 200  # a thousand connects at once overflow the listen backlog on small machines


class Client(asyncio.Protocol):
    def __init__(self, req: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.req = req
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.triplets = array("d")  # i, t, recv of every token
        self.first_i: int | None = None
        self.last_i: int | None = None
        self.violations = 0
        self.ended = False
        self.error: str | None = None
        self.reads = 0
        self.started = time.time()  # when the client began (its POST, in create mode)
        self.pending: list[tuple[float, bytes]] = []  # (receive time, raw event bytes)
        self.pending_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.req)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended and self.error is None:
            self.error = f"connection lost before the end of the stream: {exc!r}"
        self._finish()

    def _finish(self) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.done.done():
            self.done.set_result(None)

    def keep(self, now: float, raw: bytes) -> None:
        """Keep received event bytes for ``parse_pending`` (after the stream, or when big)."""
        self.pending.append((now, raw))
        self.pending_bytes += len(raw)
        if self.pending_bytes > PARSE_AFTER_BYTES:
            self.parse_pending()

    def parse_pending(self) -> None:
        """Every token kept so far, in arrival order: a gap, a duplicate or disorder counts."""
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for now, raw in pending:
            for i_b, t_b in TOKEN.findall(raw):
                i = int(i_b)
                if self.last_i is None:
                    self.first_i = i
                elif i != self.last_i + 1:
                    self.violations += 1
                self.last_i = i
                self.triplets.extend((i, float(t_b), now))

    def summary(self) -> dict:
        return {"tokens": len(self.triplets) // 3, "first_i": self.first_i, "last_i": self.last_i,
                "violations": self.violations, "ended": self.ended, "error": self.error,
                "reads": self.reads, "started": self.started}


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def open_all(clients: Sequence[Any], addrs: Sequence[tuple[str, int]]) -> None:
    """Connect client k to ``addrs[k % len(addrs)]``, in batches."""
    loop = asyncio.get_running_loop()
    for start in range(0, len(clients), CONNECT_BATCH):
        await asyncio.gather(*(
            loop.create_connection(lambda c=c: c, *addrs[(start + k) % len(addrs)])
            for k, c in enumerate(clients[start:start + CONNECT_BATCH])))


async def hold_until_stdin_closes(clients: Sequence[Any]) -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for c in clients:
        c.ended = True
        if c.transport is not None:
            c.transport.close()
    print("DONE", flush=True)


async def finish_run(clients: Sequence[Any], timeout: float, out: str | None,
                     starts: Sequence[asyncio.Task] = ()) -> None:
    """Wait for every stream to end (or the timeout), then write the results and say DONE."""
    cpu0 = time.process_time()
    try:
        await asyncio.wait_for(asyncio.gather(*starts, *(c.done for c in clients)), timeout)
    except TimeoutError:
        for c in clients:
            if not c.ended and c.error is None:
                c.error = f"timeout after {timeout}s"
    except OSError as exc:  # a create that could not connect
        for c in clients:
            if not c.ended and c.error is None:
                c.error = repr(exc)
    cpu_s = time.process_time() - cpu0  # the stream's cost, before the deferred parsing
    for c in clients:
        if c.transport is not None:
            c.transport.close()
        c.parse_pending()
    if out:
        with open(out + ".bin", "wb") as f:
            for c in clients:
                c.triplets.tofile(f)
        with open(out + ".json", "w") as f:
            json.dump({"clients": [c.summary() for c in clients], "cpu_s": cpu_s}, f)
    print("DONE", flush=True)


def runner(main: Coroutine[Any, Any, None], clients: int) -> None:
    """Run ``main`` on uvloop (the servers' loop; cheaper per read), errors reported on stdout."""
    raise_fd_limit(clients + 256)
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover - depends on the machine
        run = asyncio.run
    try:
        run(main)
    except Exception as exc:  # report to the parent instead of hanging it
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
