"""Server-side timing of event streams, for the catchup scenario's replay trials.

    python -m bench.replay_timing serve --agent ... --host 127.0.0.1 --port PORT

is ``python -m server serve`` with the app wrapped in ``Timing``: for every request whose
path ends in ``/events`` it notes, in the server's own clock (``perf_counter``), when the
ASGI app was called (the request is being served), when the first body bytes were handed
to the transport, when the first bytes of an event frame (``id: ``) were, and when the
last body write was; the event loop thread's CPU time from the call to the end of the last
write (``thread_time``: what the replay cost the server, whatever else the machine runs);
and the number, total and largest size of the body writes (each one is one HTTP chunk on
the wire). ``GET /__timing`` answers the records so far and forgets them. The raw replay
ceiling (``bench.raw_replay``) is wrapped the same way.

The wrapper costs two clock samples and a few comparisons per body write, the same for
every target; once the first event frame is seen it looks at no body's bytes.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any

import orjson

FRAME_START = b"id: "


class Timing:
    def __init__(self, app: Any, keep: int = 1000) -> None:
        self.app = app
        self.records: deque[dict[str, Any]] = deque(maxlen=keep)

    def __getattr__(self, name: str) -> Any:  # state, routes... of the wrapped app
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path == "/__timing":
            body = orjson.dumps(list(self.records))
            self.records.clear()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return None
        if not path.endswith("/events"):
            return await self.app(scope, receive, send)
        now, cpu = time.perf_counter, time.thread_time
        rec: dict[str, Any] = {"path": path, "t_call": now(), "cpu_call": cpu(), "t_first_body": None,
                               "t_first_event": None, "t_last_body": None, "cpu_last_body": None,
                               "writes": 0, "max_write": 0, "bytes": 0}
        self.records.append(rec)

        async def timed_send(message: dict) -> None:
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body:
                    t = now()
                    n = len(body)
                    rec["writes"] += 1
                    rec["bytes"] += n
                    if n > rec["max_write"]:
                        rec["max_write"] = n
                    if rec["t_first_body"] is None:
                        rec["t_first_body"] = t
                    if rec["t_first_event"] is None and (body.startswith(FRAME_START) or b"\n" + FRAME_START in body):
                        rec["t_first_event"] = t
                    rec["t_last_body"] = t
                    await send(message)
                    rec["cpu_last_body"] = cpu()  # the event loop thread's CPU, the write included
                    return
            await send(message)

        return await self.app(scope, receive, timed_send)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    real_run = uvicorn.run

    def run(app: Any, **kwargs: Any) -> None:
        real_run(Timing(app), **kwargs)

    uvicorn.run = run  # server.cli imports uvicorn and calls uvicorn.run at serve time
    from server.cli import main as server_main

    return server_main(argv)


if __name__ == "__main__":
    sys.exit(main())
