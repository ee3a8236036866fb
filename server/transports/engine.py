"""The one place that reaches into python-engineio (4.x) below its public server API.

Flow control needs what engine.io does not expose: how many packets wait in a socket's
outgoing queue, a send that does not go through socket.io's per-call encoding, and a
close that does not wait for a backlog a stalled client will never read. Everything here
degrades to "not slow" / "gone" if the internals move, so an engine.io upgrade can cost
flow control but not delivery.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload

log = logging.getLogger(__name__)


class SocketGone(Exception):
    """The engine.io socket closed (or was never there): stop sending to it."""


def allow_packets_per_poll(n: int) -> None:
    """Let one long-polling POST carry ``n`` packets.

    engine.io refuses more than 16 (a guard of the Python implementation, not of the
    protocol); a browser resubscribing to many runs at once over polling sends more. The
    body stays bounded by max_http_buffer_size. Process-wide, as python-engineio's docs say.
    """
    eio_payload.Payload.max_decode_packets = max(eio_payload.Payload.max_decode_packets, n)


class EngineSockets:
    """Queue depth, batched sends and a hard close for the sockets of one engine.io server."""

    def __init__(self, eio: Any) -> None:
        self._eio = eio

    def _socket(self, eio_sid: str) -> Any:
        return getattr(self._eio, "sockets", {}).get(eio_sid)

    def depth(self, eio_sid: str) -> int:
        """Packets queued to the socket and not yet taken by its writer."""
        queue = getattr(self._socket(eio_sid), "queue", None)
        return queue.qsize() if queue is not None else 0

    async def send(self, eio_sid: str, packets: Sequence[eio_packet.Packet]) -> None:
        """Queue packets to one socket, in order. While the socket is healthy nothing in here
        yields to the event loop, so a batch is queued whole and a cancel cannot split it."""
        sock = self._socket(eio_sid)
        if sock is None or getattr(sock, "closed", False):
            raise SocketGone
        try:
            for pkt in packets:
                await sock.send(pkt)
        except eio_exceptions.SocketIsClosedError:
            raise SocketGone from None

    async def kick(self, eio_sid: str) -> None:
        """Close a socket without waiting for its backlog to flush.

        The client sees a transport close (not a server disconnect), so socket.io clients
        reconnect by themselves and resubscribe with their last seq.
        """
        sock = self._socket(eio_sid)
        if sock is None:
            return
        try:
            await sock.close(wait=False, abort=True)
        finally:
            # Let the writer send what is queued, then close the WebSocket.
            queue = getattr(sock, "queue", None)
            if queue is not None:
                queue.put_nowait(None)
