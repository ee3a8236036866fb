"""``thoughtstream``: the command line. The only place that configures logging."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import logging
import sys
from typing import Any, Sequence

from pydantic import ValidationError

from . import gc_policy
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
    serve.add_argument("--redis-url", help="share runs through Redis (e.g. redis://localhost:6379/0, or a "
                       "Redis Cluster: redis+cluster://host:port,host:port)")
    serve.add_argument("--workers", type=int,
                       help="worker processes to start (default 1 with --redis-url; 0 = API only); "
                            "without --redis-url, N >= 1 starts a private Redis for them (README)")
    serve.add_argument("--max-concurrent-runs", type=int, help="runs executing at once; the rest wait queued")
    serve.add_argument("--checkpoint-url", help="sqlite:///path (default: in --data-dir; with --redis-url: "
                       "that Redis), redis://..., postgresql://..., memory://")
    serve.add_argument("--data-dir", help="where the SQLite checkpoints live (default .thoughtstream)")
    serve.add_argument("--llm", choices=["scripted", "openai"], help="chat model of the built-in agent")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument("--log-format", choices=["text", "json"],
                       help="json: one object per line, with run_id, tenant, agent on a run's lines")
    serve.add_argument("--metrics-port", type=int,
                       help="also serve /metrics on this port (same host), without auth")
    auth = serve.add_argument_group("identity (see README, 'Secure it')")
    auth.add_argument("--auth", choices=["none", "jwt", "api_keys"],
                      help="none (default: anyone who reaches the port), jwt, or api_keys")
    auth.add_argument("--jwt-secret", help="HS256 secret (prefer THOUGHTSTREAM_JWT_SECRET: flags show in ps)")
    auth.add_argument("--jwt-public-key", help="path to a PEM public key (RSA: RS256, EC: ES256)")
    auth.add_argument("--jwt-jwks-url", help="JWKS URL of the identity provider (keys by kid)")
    auth.add_argument("--jwt-audience", help="required aud claim")
    auth.add_argument("--jwt-issuer", help="required iss claim")
    auth.add_argument("--api-keys-file", help="API keys file written by `thoughtstream keys add`")
    worker = sub.add_parser("worker", help="execute runs from the Redis queue (no HTTP)")
    worker.add_argument("--redis-url", help="the Redis (or redis+cluster://...) shared with the API processes")
    worker.add_argument("--agent", action="append", default=[], metavar="NAME=SPEC",
                        help="graphs this worker can run (same as serve's)")
    worker.add_argument("--max-concurrent-runs", type=int, help="runs this worker executes at once")
    worker.add_argument("--agents", help="comma-separated agents this worker takes (a pool, e.g. for heavy "
                                         "agents); default: all")
    worker.add_argument("--checkpoint-url", help="sqlite:///path (default: in --data-dir; with --redis-url: "
                        "that Redis), redis://..., postgresql://..., memory://")
    worker.add_argument("--data-dir", help="where the SQLite checkpoints live (default .thoughtstream)")
    worker.add_argument("--llm", choices=["scripted", "openai"], help="chat model of the built-in agent")
    worker.add_argument("--log-level", help="debug, info, warning, error")
    worker.add_argument("--log-format", choices=["text", "json"],
                        help="json: one object per line, with run_id, tenant, agent on a run's lines")
    keys = sub.add_parser("keys", help="manage API keys (only their SHA-256 is stored)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_sub.add_parser("add", help="create a key: printed once, never stored")
    add.add_argument("--tenant", required=True)
    add.add_argument("--roles", default="member", help="comma-separated: viewer, member, admin (default member)")
    add.add_argument("--name", help="a label for the key (default <tenant>-<n>); its subject is key:<name>")
    listing = keys_sub.add_parser("list", help="the keys' names, tenants and roles")
    remove = keys_sub.add_parser("remove", help="delete a key by name")
    remove.add_argument("--name", required=True)
    for cmd in (add, listing, remove):
        cmd.add_argument("--file", help="the keys file (default THOUGHTSTREAM_API_KEYS_FILE, "
                                        "else <data dir>/api_keys.json)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag in ("host", "port", "redis_url", "workers", "max_concurrent_runs", "llm", "log_level",
                 "checkpoint_url", "data_dir", "auth", "jwt_secret", "jwt_public_key", "jwt_jwks_url",
                 "jwt_audience", "jwt_issuer", "api_keys_file", "log_format", "metrics_port"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    base = Settings()
    if getattr(args, "agent", None):
        overrides["agents"] = (*base.agents, *args.agent)
    if getattr(args, "agents", None):
        overrides["worker_agents"] = tuple(a.strip() for a in args.agents.split(",") if a.strip())
    return base.model_copy(update=overrides) if overrides else base


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        # Decided on what the flags and the environment set: the re-validation below marks
        # every field as set, and a plain `serve` must not look like `serve --workers 1`.
        private_redis = wants_private_redis(settings)
        settings = Settings.model_validate(settings.model_dump())  # re-validate flag values
    except ValidationError as exc:
        print(f"thoughtstream: invalid setting: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    if args.command == "serve":
        return _serve(settings, private_redis=private_redis)
    if args.command == "worker":
        return _worker(settings)
    if args.command == "keys":
        return _keys(args, settings)
    return 2


def _configure_logging(settings: Settings) -> None:
    if settings.log_format == "json":
        from .observability.logs import JsonFormatter, RunContextFilter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RunContextFilter())  # on the handler: it sees every logger's records
        logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
        logging.captureWarnings(True)  # a library's warnings.warn would be a line of plain text
    else:
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from .auth.api_keys import KeysFileError, add_key, list_keys, remove_key
    from .auth.caller import ROLES, TENANT_RE

    path = Path(args.file) if args.file else (settings.api_keys_file or Path(settings.data_dir) / "api_keys.json")
    try:
        if args.keys_command == "add":
            roles = [r.strip() for r in args.roles.split(",") if r.strip()]
            if not roles or any(r not in ROLES for r in roles):
                print(f"thoughtstream keys: roles must be among {', '.join(ROLES)}", file=sys.stderr)
                return 2
            if not TENANT_RE.match(args.tenant):
                print("thoughtstream keys: a tenant is 1-128 characters of A-Z a-z 0-9 _ . : @ -", file=sys.stderr)
                return 2
            key, name = add_key(path, tenant=args.tenant, roles=roles, name=args.name)
            print(f"# key {name!r} for tenant {args.tenant!r} ({', '.join(roles)}), stored as a hash in {path}.",
                  file=sys.stderr)
            print("# It is shown only now. Send it as the X-Api-Key header.", file=sys.stderr)
            print(key)
        elif args.keys_command == "list":
            for entry in list_keys(path):
                print(f"{entry['name']}\ttenant={entry['tenant']}\troles={','.join(entry['roles'])}"
                      f"\tsha256={entry['sha256']}…")
        elif args.keys_command == "remove":
            if not remove_key(path, args.name):
                print(f"thoughtstream keys: no key named {args.name!r} in {path}", file=sys.stderr)
                return 1
    except (KeysFileError, OSError) as exc:
        print(f"thoughtstream keys: {exc}", file=sys.stderr)
        return 2
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _warn_if_open(settings: Settings) -> None:
    if settings.auth == "none" and settings.host not in LOOPBACK and not settings.host.startswith("127."):
        logging.getLogger("server.auth").warning(
            "THOUGHTSTREAM_AUTH=none while listening on %s: anyone who can reach this port can "
            "see, start and cancel every run. Set THOUGHTSTREAM_AUTH=jwt or api_keys (README, "
            "'Secure it').", settings.host)


def wants_private_redis(settings: Settings) -> bool:
    """``--workers N`` (N >= 1) asked for with no Redis named: worker processes need one."""
    return settings.redis_url is None and "workers" in settings.model_fields_set and settings.workers > 0


def _serve(settings: Settings, *, private_redis: bool = False) -> int:
    import uvicorn

    from .agents.registry import AgentLoadError
    from .app import create_app

    with contextlib.ExitStack() as stack:
        if private_redis:
            # Every core without installing a Redis: server/local_redis.py says why and how.
            from .local_redis import LocalRedis, LocalRedisError

            try:
                local = stack.enter_context(LocalRedis(settings.data_dir))
            except LocalRedisError as exc:
                print(f"thoughtstream: {exc}", file=sys.stderr)
                return 2
            settings = settings.model_copy(update={"redis_url": local.url})
        try:
            app = create_app(settings)
        except (AgentLoadError, ValueError) as exc:  # ValueError: auth settings that cannot work
            print(f"thoughtstream: {exc}", file=sys.stderr)
            return 2
        _warn_if_open(settings)
        if settings.redis_url and settings.workers:
            from .supervisor import WorkerProcesses

            stack.enter_context(WorkerProcesses(settings, settings.workers))
        # JSON lines: uvicorn's own loggers then go through the root handler, not its formatters.
        log_config = {"log_config": None} if settings.log_format == "json" else {}
        gc_policy.apply(settings.gc_young_threshold)  # the agents and the app are built
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                    timeout_graceful_shutdown=5, lifespan="on", loop=_loop_setting(), **log_config)
    return 0


def _loop_setting() -> str:
    """uvloop with batched accept (server/fast_accept.py says why), where uvloop is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "auto"
    return "server.fast_accept:new_event_loop"


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker `serve --workers N` started stops (gracefully) once that serve is gone,
    however it went: uvicorn re-raises the SIGTERM it caught after its shutdown, so the
    supervisor's own clean-up does not always get to run."""
    from .supervisor import SUPERVISOR_PID_ENV

    parent = os.environ.get(SUPERVISOR_PID_ENV)
    if not parent or not parent.isdigit():
        return
    while os.getppid() == int(parent):
        await asyncio.sleep(1.0)
    logging.getLogger("server.worker").warning("the serve process that started this worker is gone; stopping")
    stop.set()


def _worker(settings: Settings) -> int:
    if not settings.redis_url:
        print("thoughtstream worker: needs --redis-url (or THOUGHTSTREAM_REDIS_URL); "
              "the embedded default runs runs inside `serve`", file=sys.stderr)
        return 2
    from .agents.registry import AgentLoadError, AgentRegistry
    from .backends import open_backend
    from .observability import Metrics

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
        orphaned = asyncio.create_task(_stop_when_orphaned(stop), name="parent-watch")
        try:
            async with open_backend(settings, registry, worker=True,
                                    metrics=Metrics.from_settings(settings, "worker")):
                gc_policy.apply(settings.gc_young_threshold)
                await stop.wait()
        finally:
            orphaned.cancel()

    try:  # the API processes get uvloop through uvicorn; the worker should too
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0
