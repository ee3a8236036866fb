"""Settings: one frozen object, read once at the edge and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server. Flags override ``THOUGHTSTREAM_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="THOUGHTSTREAM_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # Every this many seconds (0 = never), log one line of process stats at INFO on the
    # `server.stats` logger, whatever log_level says: asyncio tasks, RSS, what the memory
    # backend holds. For soak tests and operators watching for growth.
    stats_log_s: float = Field(0.0, ge=0)

    # Agents: extra graphs as "name=module:attr" or "name=path/file.py:attr".
    agents: tuple[str, ...] = ()

    # Backend selection happens once, in the composition root.
    redis_url: str | None = None
    key_prefix: str = "ts"
    data_dir: Path = Path(".thoughtstream")
    # Embedded default: keep run records and logs in <data_dir>/journal.sqlite so a restart
    # resumes runs. Events are shown once kept (a few ms later); off = memory only, faster.
    journal: bool = True
    # Worker processes `serve` starts with Redis (0 = API only); `thoughtstream worker` adds more.
    workers: int = Field(1, ge=0)
    worker_lease_s: float = Field(15.0, gt=0)
    # A run whose worker died resumes from its last checkpoint at most this many times in all.
    max_attempts: int = Field(3, ge=1)
    # sqlite:///path (default: <data_dir>/checkpoints.sqlite), postgresql://..., memory://
    checkpoint_url: str | None = None
    # How long an append rides out a Redis outage before the run fails.
    redis_outage_s: float = Field(10.0, gt=0)

    # Runs.
    max_concurrent_runs: int = Field(8, ge=1)
    max_queued_runs: int = Field(1000, ge=1)
    run_timeout_s: float = Field(600.0, gt=0)
    max_body_bytes: int = Field(64 * 1024, ge=1024)

    # Logs and subscribers (the event contract's bounds).
    log_max_events: int = Field(10_000, ge=10)
    log_ttl_s: float = Field(3600.0, gt=0)
    subscriber_buffer: int = Field(1024, ge=1)
    # Finished runs' logs kept in memory, for the watchers that come right as a run ends:
    # past either bound (events; bytes of JSON plus ~400 bytes of objects per event) the
    # log that ended first leaves memory (one being read stays until its reader is done).
    # With the journal a log that left is read from disk on demand, with the same cursors
    # and TTL. With THOUGHTSTREAM_JOURNAL=false (memory only) a log that left is gone: its
    # events answer 410 log_expired, as after its TTL; so these bounds are also all the
    # history a memory-only server keeps. Live runs' logs are never pushed out.
    finished_logs_max_events: int = Field(20_000, ge=0)
    finished_logs_max_bytes: int = Field(16 * 1024 * 1024, ge=0)
    sse_ping_s: float = Field(15.0, gt=0)
    sse_send_timeout_s: float = Field(30.0, gt=0)

    # Socket.IO (browsers). Origins allowed to open Socket.IO connections: a comma-separated
    # list ("https://app.example.com,http://localhost:5173"), or "*" for any. The server's
    # own origin (the Origin's host equals the request's Host) is always allowed; when the
    # list is empty, so are loopback origins (http(s)://localhost|127.0.0.1|[::1], any port).
    # Clients that send no Origin (non-browsers) are not checked.
    allowed_origins: str = ""
    # Packets queued to one socket before it is cut from a run's live room and resynced
    # from the log once it drains (the Socket.IO twin of subscriber_buffer).
    socketio_queue_limit: int = Field(1024, ge=8)
    # A cut socket that does not drain below half the limit within this is disconnected;
    # its client reconnects and resubscribes with its last seq.
    socketio_send_timeout_s: float = Field(30.0, gt=0)
    socketio_ping_interval_s: float = Field(25.0, gt=0)
    socketio_ping_timeout_s: float = Field(20.0, gt=0)
    socketio_max_runs_per_socket: int = Field(100, ge=1)
    # Long-polling needs sticky sessions across several API processes; WebSocket does not.
    socketio_polling: bool = True

    # Chat model for the built-in agent.
    llm: Literal["scripted", "openai"] = "scripted"
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    scripted_tokens_per_s: float = Field(60.0, gt=0)
    reflective_max_rounds: int = Field(3, ge=1)
