"""Settings: one frozen object, read once at the edge and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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
    # text: "time LEVEL logger: message"; json: one object per line (ts, level, logger,
    # message, and run_id, tenant, agent on every line a run causes).
    log_format: Literal["text", "json"] = "text"
    # Allocations between young garbage collections (server/gc_policy.py says why; 0 keeps
    # Python's default of 700).
    gc_young_threshold: int = Field(100_000, ge=0)

    # Metrics (server/observability). GET /metrics is admin-only when auth is on; this port
    # (same host) serves /metrics alone, without auth, for a Prometheus on the monitoring
    # network.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    # Distinct tenant label values a process reports; the rest are "other". Likewise the
    # event namespaces user graphs invent (the protocol's own are never capped).
    metrics_max_tenants: int = Field(50, ge=1)
    metrics_max_ns: int = Field(32, ge=1)
    # With Redis: how often each process publishes its counts for the others' /metrics.
    metrics_publish_s: float = Field(5.0, gt=0)

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
    # A worker renews its runs' leases 4 times per lease from a thread of its own (a busy
    # event loop cannot starve it); a dead worker's runs are taken over at most
    # lease * 9/8 after it died (4 s: within 4.5 s).
    worker_lease_s: float = Field(4.0, gt=0)
    # `thoughtstream worker --agents a,b`: the pool of agents this worker takes (empty: all).
    worker_agents: tuple[str, ...] = ()
    # A run whose worker died resumes from its last checkpoint at most this many times in all.
    max_attempts: int = Field(3, ge=1)
    # sqlite:///path (default: <data_dir>/checkpoints.sqlite; with redis_url: that Redis, so a
    # worker on another machine can resume a dead worker's run), redis://..., postgresql://
    # (long-lived threads), memory://
    checkpoint_url: str | None = None
    # How long an append rides out a Redis outage before the run fails.
    redis_outage_s: float = Field(10.0, gt=0)
    # Connections a process keeps to Redis (per node on a cluster). A command waits for a free
    # one for up to redis_outage_s: 1,000 runs streaming on a loaded machine held 64 busy past
    # that, and their runs stopped as if Redis were unreachable (bench cores).
    redis_max_connections: int = Field(256, ge=4)
    # Acknowledged appends that survive a failover: after each batch, WAIT until this many
    # replicas hold it (0: don't wait; Redis replicates asynchronously). A batch not
    # acknowledged within redis_wait_timeout_s is asked again, up to redis_outage_s, then
    # the run's next write fails as Redis unavailable. Costs one replica round trip per batch.
    redis_wait_replicas: int = Field(0, ge=0)
    # (At most 4 s: the pooled connections' socket timeout is 5 s, and WAIT answers on one.)
    redis_wait_timeout_s: float = Field(1.0, gt=0, le=4.0)

    # Identity (DESIGN.md "Identity"). none: whoever reaches the port is the local caller of
    # tenant "default" with every role (fine on loopback; `serve` warns on other addresses).
    # jwt: Bearer JWTs (plus API keys when api_keys_file is set); api_keys: API keys only.
    auth: Literal["none", "jwt", "api_keys"] = "none"
    # Exactly one key source for jwt: an HS256 secret (>= 32 bytes), a PEM public key (RSA:
    # RS256, EC: ES256), or a JWKS URL (keys by kid, refetched on an unknown kid at most
    # every jwt_jwks_refetch_s).
    jwt_secret: SecretStr | None = None
    jwt_public_key: Path | None = None
    jwt_jwks_url: str | None = None
    jwt_jwks_refetch_s: float = Field(10.0, ge=0)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = "tenant"
    jwt_roles_claim: str = "roles"
    jwt_leeway_s: float = Field(0.0, ge=0, le=300)
    # {sha256(key): {tenant, roles, name}}; `thoughtstream keys add` writes it.
    api_keys_file: Path | None = None
    # POST /runs/{id}/ticket: how long a ticket opens its run's SSE stream.
    ticket_ttl_s: float = Field(60.0, gt=0, le=3600)
    # Socket.IO: auth_expiring is sent this long before the credential's exp.
    auth_expiring_s: float = Field(30.0, ge=0)

    # Fair share across tenants (DESIGN.md "Tenancy and fair share"): weighted round-robin
    # between tenants with runs waiting ("acme=3,beta=1"; others weigh 1), FIFO within one.
    tenant_weights: str = ""
    # Runs of one tenant executing at once (0 = no cap of its own), with per-tenant overrides
    # in the same name=value form; beyond it runs wait queued (never a 429).
    tenant_max_running: int = Field(0, ge=0)
    tenant_max_running_overrides: str = ""
    # Runs of one tenant waiting at once (0 = only max_queued_runs); beyond it: 429 tenant_queue_full.
    tenant_max_queued: int = Field(0, ge=0)
    # Run creations per tenant, e.g. "5/s,burst=20" or "100/min" (GCRA); beyond it: 429 rate_limited.
    tenant_rate: str = ""

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

    # The delivery gate (contexts). A run with a context that ends later than this after it
    # was created is ``expired`` (a run's context.deliver_within_s overrides it).
    deliver_within_s: float = Field(3600.0, gt=0)
    # What finished while nobody watched waits in its context's inbox: the newest this many,
    # for this long.
    inbox_max_entries: int = Field(50, ge=1)
    inbox_ttl_s: float = Field(24 * 3600.0, gt=0)
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
