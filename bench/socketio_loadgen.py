"""Socket.IO load generator: N clients on raw asyncio sockets speaking WebSocket + Engine.IO 4.

The Socket.IO twin of ``bench/loadgen.py``, with the same contract towards its parent
(``bench.socketio_fanout``), so both transports are measured by equally cheap clients:

    python -m bench.socketio_loadgen --url http://127.0.0.1:PORT --run-id ID --clients 50 --out /tmp/x

On stdout: ``READY <epoch> <n>`` once every client has its ``subscribe`` ack, then
``DONE`` once every client has seen ``run_end`` (or the timeout hit). Results go to
``<out>.json`` (per-client counts and checks) and ``<out>.bin`` (float64 pairs ``ts,
recv`` for every THOUGHT event). With ``--idle`` the clients only connect and subscribe,
print READY, and stay until stdin closes (memory per idle connection).

Raw sockets, not python-socketio + aiohttp: per WebSocket message this does one frame
header parse and one orjson parse. Client frames use the all-zero mask key (masking is
mandatory, the key's randomness only matters against proxies, not here).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import time
from array import array
from urllib.parse import urlsplit

import orjson

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ZERO_MASK = b"\x00\x00\x00\x00"


def ws_text_frame(text: bytes) -> bytes:
    n = len(text)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + text  # XOR with a zero key leaves the payload as is


def ws_control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return bytes((0x80 | opcode, 0x80 | len(payload))) + ZERO_MASK + payload


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class SioClient(asyncio.Protocol):
    """One Socket.IO connection over WebSocket that subscribes to one run from seq 0."""

    def __init__(self, host: str, port: int, run_id: str, samples: array,
                 ready: asyncio.Future, done: asyncio.Future, *, idle: bool = False, batch: bool = False) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
        sub = {"run_id": run_id, "after": 0, **({"batch": True} if batch else {})}
        self.subscribe = ws_text_frame(b'421["subscribe",' + orjson.dumps(sub) + b"]")
        self.samples = samples
        self.ready = ready
        self.done = done
        self.idle = idle
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.frag: list[bytes] = []
        self.events = 0
        self.thoughts = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.violations = 0
        self.ended = False
        self.ends = 0
        self.error: str | None = None
        self.reads = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended and self.error is None:
            self.error = f"connection lost before run_end: {exc!r}"
        self._finish()

    def _finish(self) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, why: str) -> None:
        self.error = why
        if self.transport is not None:
            self.transport.close()
        self._finish()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.reads += 1
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(f"handshake refused: {buf[:200]!r}")
                return
            self.upgraded = True
            buf = buf[end + 4:]
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln = b1 & 0x7F
            hdr = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 4], "big")
                hdr = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hdr = 10
            if n - pos < hdr + ln:
                break
            payload = buf[pos + hdr:pos + hdr + ln]
            pos += hdr + ln
            opcode = b0 & 0x0F
            if opcode == 0x9:  # WebSocket ping
                self.transport.write(ws_control_frame(0xA, payload))
                continue
            if opcode == 0x8:
                self.transport.close()
                continue
            if not b0 & 0x80:  # a fragment; keep until the final one
                self.frag.append(payload)
                continue
            if self.frag:
                payload = b"".join(self.frag) + payload
                self.frag.clear()
            self._message(payload, now)
        self.buf = buf[pos:] if pos < n else b""

    def _message(self, m: bytes, now: float) -> None:
        if m[:2] == b"42":
            if m[2:11] == b'["event",':
                self._event(orjson.loads(m[11:-1]), now)
            elif m[2:12] == b'["events",':
                for ev in orjson.loads(m[12:-1]):
                    self._event(ev, now)
            else:
                name, body = orjson.loads(m[2:])[:2]
                if name == "run_end":
                    self.ends += 1
                    self.ended = True
                    self.transport.write(ws_control_frame(0x8, b"\x03\xe8"))
                    self.transport.close()
                    self._finish()
                elif name == "reset":
                    self.error = f"reset: {body}"
        elif m == b"2":  # engine.io ping
            self.transport.write(ws_text_frame(b"3"))
        elif m[:3] == b"431":
            ack = orjson.loads(m[3:])[0]
            if not ack.get("ok"):
                self._fail(f"subscribe refused: {ack}")
            elif not self.ready.done():
                self.ready.set_result(True)
        elif m[:2] == b"40":
            self.transport.write(self.subscribe)
        elif m[:1] == b"0":  # engine.io open: join the default namespace
            self.transport.write(ws_text_frame(b"40"))
        elif m[:2] == b"44":
            self._fail(f"connect error: {m[:200]!r}")

    def _event(self, ev: dict, now: float) -> None:
        seq = ev["seq"]
        self.events += 1
        if self.last_seq is None:
            self.first_seq = seq
        elif seq != self.last_seq + 1:
            self.violations += 1
        self.last_seq = seq
        if ev["ns"] == "THOUGHT":
            self.thoughts += 1
            self.samples.append(ev["ts"])
            self.samples.append(now)

    def summary(self) -> dict:
        return {"events": self.events, "thoughts": self.thoughts, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "violations": self.violations + max(0, self.ends - 1),
                "ended": self.ended, "error": self.error, "reads": self.reads}


async def open_all(loop: asyncio.AbstractEventLoop, protos: list, host: str, port: int, batch: int = 200) -> None:
    """Connect in batches (a thousand at once overflows the listen backlog on small machines)."""
    for i in range(0, len(protos), batch):
        await asyncio.gather(*(loop.create_connection(lambda p=p: p, host, port) for p in protos[i:i + batch]))


async def run(url: str, run_id: str, clients: int, timeout: float, out: str | None, idle: bool,
              batch: bool = False) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    samples = array("d")
    protos = [SioClient(host, port, run_id, samples, loop.create_future(), loop.create_future(),
                        idle=idle, batch=batch) for _ in range(clients)]
    await open_all(loop, protos, host, port)
    oks = await asyncio.wait_for(asyncio.gather(*(p.ready for p in protos)), 120)
    print(f"READY {time.time():.6f} {sum(oks)}", flush=True)
    if idle:
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
        for p in protos:
            p.ended = True
            if p.transport is not None:
                p.transport.close()
        print("DONE", flush=True)
        return
    cpu0 = time.process_time()
    try:
        await asyncio.wait_for(asyncio.gather(*(p.done for p in protos)), timeout)
    except TimeoutError:
        for p in protos:
            if not p.ended and p.error is None:
                p.error = f"timeout after {timeout}s"
    for p in protos:
        if p.transport is not None:
            p.transport.close()
    if out:
        with open(out + ".bin", "wb") as f:
            samples.tofile(f)
        with open(out + ".json", "w") as f:
            json.dump({"clients": [p.summary() for p in protos], "cpu_s": time.process_time() - cpu0}, f)
    print("DONE", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the server's base URL")
    p.add_argument("--run-id", required=True)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", help="results path prefix (.json and .bin are added)")
    p.add_argument("--idle", action="store_true", help="connect, subscribe, then wait for stdin to close")
    p.add_argument("--batch", action="store_true", help="subscribe with batch: true (``events`` lists)")
    args = p.parse_args()
    raise_fd_limit(args.clients + 64)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - depends on the machine
        runner = asyncio.run
    try:
        runner(run(args.url, args.run_id, args.clients, args.timeout, args.out, args.idle, args.batch))
    except Exception as exc:  # report to the parent instead of hanging it
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
