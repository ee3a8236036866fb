"""Socket.IO load generator: N clients on raw asyncio sockets speaking WebSocket + Engine.IO 4.

The Socket.IO twin of ``bench/loadgen.py``, with the same contract towards its parent
(READY/DONE on stdout, ``<out>.json`` and ``<out>.bin``; see ``bench/clients.py``):

    python -m bench.socketio_loadgen --url http://127.0.0.1:PORT --run-id ID --clients 50 --out /tmp/x
        [--batch] [--after SEQ] [--idle]

READY comes once every client has its ``subscribe`` ack; a client is done at ``run_end``.
``--batch`` subscribes with ``batch: true`` (``events`` lists); ``--idle`` only connects,
subscribes and holds until stdin closes. Order is checked on the tokens' index, as the SSE
client checks it (``Client.parse_pending``).

Raw sockets, not python-socketio + aiohttp: per WebSocket message this does one frame
header parse; event messages are kept raw and their tokens read after the stream with
the same regex the SSE client uses, so both clients cost the same per event. Client frames use the all-zero mask key (masking is
mandatory, the key's randomness only matters against proxies, not here).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
from urllib.parse import urlsplit

import orjson

from .clients import Client, finish_run, hold_until_stdin_closes, open_all, runner

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


class SioClient(Client):
    """One Socket.IO connection over WebSocket that subscribes to one run from seq 0."""

    def __init__(self, host: str, port: int, run_id: str, *, after: int = 0, batch: bool = False) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        super().__init__((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                          f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        sub = {"run_id": run_id, "after": after, **({"batch": True} if batch else {})}
        self.subscribe = ws_text_frame(b'421["subscribe",' + orjson.dumps(sub) + b"]")
        self.upgraded = False
        self.buf = b""
        self.frag: list[bytes] = []
        self.ends = 0

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
            if m[2:11] == b'["event",' or m[2:12] == b'["events",':
                self.keep(now, m)  # tokens parsed after the stream, as the SSE client does
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

    def summary(self) -> dict:
        out = super().summary()
        out["violations"] += max(0, self.ends - 1)  # more than one run_end
        return out


async def run(args: argparse.Namespace) -> None:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    clients = [SioClient(host, port, args.run_id, after=args.after, batch=args.batch)
               for _ in range(args.clients)]
    await open_all(clients, [(host, port)])
    oks = await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), 120)
    print(f"READY {time.time():.6f} {sum(oks)}", flush=True)
    if args.idle:
        await hold_until_stdin_closes(clients)
    else:
        await finish_run(clients, args.timeout, args.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the server's base URL")
    p.add_argument("--run-id", required=True)
    p.add_argument("--after", type=int, default=0, help="subscribe from this cursor (seq)")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", help="results path prefix (.json and .bin are added)")
    p.add_argument("--idle", action="store_true", help="connect, subscribe, then wait for stdin to close")
    p.add_argument("--batch", action="store_true", help="subscribe with batch: true (``events`` lists)")
    args = p.parse_args()
    runner(run(args), args.clients)


if __name__ == "__main__":
    main()
