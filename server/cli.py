"""``thoughtstream``: the command line. The only place that configures logging."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import logging
import sys
from typing import Any, Sequence

from pydantic import ValidationError

from .config import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thoughtstream",
                                description="Real-time streaming server for LangGraph agent runs.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/SSE/Socket.IO server (embedded default: no Redis)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--agent", action="append", default=[], metavar="NAME=SPEC",
                       help="serve a graph: SPEC is package.module:attr or path/to/file.py:attr (repeatable)")
    serve.add_argument("--redis-url", help="share runs through Redis (e.g. redis://localhost:6379/0)")
    serve.add_argument("--workers", type=int,
                       help="with --redis-url: worker processes to start (default 1; 0 = API only)")
    serve.add_argument("--max-concurrent-runs", type=int, help="runs executing at once; the rest wait queued")
    serve.add_argument("--checkpoint-url", help="sqlite:///path (default: in --data-dir), postgresql://..., memory://")
    serve.add_argument("--data-dir", help="where the SQLite checkpoints live (default .thoughtstream)")
    serve.add_argument("--llm", choices=["scripted", "openai"], help="chat model of the built-in agent")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    worker = sub.add_parser("worker", help="execute runs from the Redis queue (no HTTP)")
    worker.add_argument("--redis-url", help="the Redis shared with the API processes")
    worker.add_argument("--agent", action="append", default=[], metavar="NAME=SPEC",
                        help="graphs this worker can run (same as serve's)")
    worker.add_argument("--max-concurrent-runs", type=int, help="runs this worker executes at once")
    worker.add_argument("--checkpoint-url", help="sqlite:///path (default: in --data-dir), postgresql://..., memory://")
    worker.add_argument("--data-dir", help="where the SQLite checkpoints live (default .thoughtstream)")
    worker.add_argument("--llm", choices=["scripted", "openai"], help="chat model of the built-in agent")
    worker.add_argument("--log-level", help="debug, info, warning, error")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag in ("host", "port", "redis_url", "workers", "max_concurrent_runs", "llm", "log_level",
                 "checkpoint_url", "data_dir"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    base = Settings()
    if args.agent:
        overrides["agents"] = (*base.agents, *args.agent)
    return base.model_copy(update=overrides) if overrides else base


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        settings = Settings.model_validate(settings.model_dump())  # re-validate flag values
    except ValidationError as exc:
        print(f"thoughtstream: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(settings)
    if args.command == "worker":
        return _worker(settings)
    return 2


def _serve(settings: Settings) -> int:
    import uvicorn

    from .agents.registry import AgentLoadError
    from .app import create_app

    try:
        app = create_app(settings)
    except AgentLoadError as exc:
        print(f"thoughtstream: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if settings.redis_url and settings.workers:
            from .supervisor import WorkerProcesses

            stack.enter_context(WorkerProcesses(settings, settings.workers))
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                    timeout_graceful_shutdown=5, lifespan="on")
    return 0


def _worker(settings: Settings) -> int:
    if not settings.redis_url:
        print("thoughtstream worker: needs --redis-url (or THOUGHTSTREAM_REDIS_URL); "
              "the embedded default runs runs inside `serve`", file=sys.stderr)
        return 2
    from .agents.registry import AgentLoadError, AgentRegistry
    from .backends import open_backend

    try:
        registry = AgentRegistry.from_settings(settings)
    except AgentLoadError as exc:
        print(f"thoughtstream: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with open_backend(settings, registry, worker=True):
            await stop.wait()

    try:  # the API processes get uvloop through uvicorn; the worker should too
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0
