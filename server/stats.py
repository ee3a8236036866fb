"""A stats line in the log, every few seconds, when the operator asks for it.

``THOUGHTSTREAM_STATS_LOG_S=5`` logs, on the ``server.stats`` logger at INFO (whatever
``log_level`` says: asking for the line is asking to see it), one JSON object: the
process's asyncio tasks and RSS, and what the backend's parts hold (logs, records,
runs). Nothing is served over HTTP for it, so nothing new is exposed; the soak bench
reads it from the server's log to see that tasks return to their baseline.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

import orjson

log = logging.getLogger("server.stats")
PREFIX = "stats "


def rss_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None  # not Linux: the line goes without it


def snapshot(sources: dict[str, Callable[[], dict]]) -> dict:
    out: dict = {"tasks": len(asyncio.all_tasks()), "rss_kib": rss_kib()}
    for name, source in sources.items():
        for key, value in source().items():
            out[f"{name}_{key}"] = value
    return out


@asynccontextmanager
async def stats_logger(interval_s: float, sources: dict[str, Callable[[], dict]]) -> AsyncIterator[None]:
    """Log ``snapshot(sources)`` every ``interval_s`` while inside (never, when 0)."""
    if interval_s <= 0:
        yield
        return
    log.setLevel(logging.INFO)

    async def forever() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                log.info(PREFIX + orjson.dumps(snapshot(sources)).decode())
            except Exception:  # a broken source must not end the line for good
                log.exception("stats line failed")

    task = asyncio.create_task(forever(), name="stats-logger")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
