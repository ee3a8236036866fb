"""Pick the backend once, at the edge: the only place that knows which one runs.

The backend decides where logs, run records and the queue live; everything else
talks to the interfaces (Bus, RunStore, Runner). With Redis, this module also owns the
connections: it creates the one pooled client and the one retry policy (``RedisOps``)
and hands them to the bus, the store and the queue. No other module creates a Redis
client, and memory mode never imports redis.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol

from . import redis_keys
from .auth.store import AuthStore, MemoryAuthStore
from .bus.base import Bus
from .config import Settings
from .observability import Metrics
from .observability.exposition import Overview, Peers
from .runs.checkpoints import log_barrier, open_checkpointer
from .runs.executor import Executor
from .runs.fair import TenantPolicy
from .runs.lifecycle import Lifecycle
from .runs.service import RunService, Runner
from .runs.store import RunStore
from .threads.service import ThreadService
from .threads.store import MemoryThreadStore, RedisThreadStore

if TYPE_CHECKING:
    from .redis_ops import RedisOps


class RunHost(Protocol):
    """Something executing runs in this process (a Redis worker)."""

    def active(self) -> int: ...


@dataclass
class Backend:
    name: str
    bus: Bus
    store: RunStore
    runner: Runner
    service: RunService
    lifecycle: Lifecycle
    worker: RunHost | None = None  # the Redis worker, when this process hosts one
    auth: AuthStore | None = None  # tickets and revocations (shared by every process on Redis)
    metrics: Metrics | None = None  # this process's counters
    # What /metrics reads when scraped: the dispatcher's queue figures, and (Redis) the
    # other processes' counters.
    overview: Overview | None = None
    metric_peers: Peers | None = None
    threads: Any = None  # ThreadService: LangGraph threads (the LangGraph protocol)
    gate: Any = None  # the delivery gate: contexts, verdicts, inboxes


@asynccontextmanager
async def open_backend(settings: Settings, registry: Any, *, worker: bool = False,
                       metrics: Metrics | None = None) -> AsyncIterator[Backend]:
    """Open the backend. ``worker=True`` (Redis only) also runs a queue worker here.
    ``metrics``: this process's, counted into by the bus, the lifecycle and the executor."""
    if metrics is None:
        metrics = Metrics.from_settings(settings, "worker" if worker else "api")
    async with AsyncExitStack() as stack:
        if settings.redis_url:
            backend = await stack.enter_async_context(_open_redis(settings, registry, worker, metrics))
        else:
            backend = await stack.enter_async_context(_open_memory(settings, registry, metrics))
        yield backend


def _overview(service: RunService, bus: Bus) -> Any:
    """What /metrics reads when scraped: the dispatcher's queue figures and the backend's health."""

    async def overview() -> dict[str, Any]:
        view = await service.overview()
        view["backend_up"] = await bus.ping()
        return view

    return overview


def _gate(settings: Settings, bus: Bus, lifecycle: Lifecycle, contexts: Any, presence: Any) -> Any:
    """The delivery gate, wired in: every subscription counts as a watcher, every ending
    gets its verdict (lifecycle) and is announced or put in an inbox (its end hook)."""
    from .gate.gate import Gate

    gate = Gate(contexts=contexts, bus=bus, presence=presence, deliver_within_s=settings.deliver_within_s)
    bus.presence = presence  # type: ignore[attr-defined]
    lifecycle.gate = gate
    return gate


def _executor(settings: Settings, bus: Bus, store: RunStore, lifecycle: Lifecycle, registry: Any,
              checkpointer: Any, durable_records: bool, metrics: Metrics) -> Executor:
    from langgraph.checkpoint.memory import InMemorySaver

    durable_checkpoints = checkpointer is not None and not isinstance(checkpointer, InMemorySaver)
    return Executor(bus=bus, store=store, lifecycle=lifecycle, registry=registry,
                    run_timeout_s=settings.run_timeout_s, checkpointer=checkpointer,
                    recoverable=durable_records and durable_checkpoints, metrics=metrics)


@asynccontextmanager
async def _open_memory(settings: Settings, registry: Any, metrics: Metrics) -> AsyncIterator[Backend]:
    from .bus.memory import MemoryBus
    from .journal import Journal
    from .runs.queue import LocalRunner
    from .runs.store import MemoryRunStore
    from .stats import stats_logger

    async with AsyncExitStack() as stack:
        journal = None
        if settings.journal:
            journal = await stack.enter_async_context(Journal(
                Path(settings.data_dir) / "journal.sqlite", max_events=settings.log_max_events))
        bus = await stack.enter_async_context(MemoryBus(
            max_events=settings.log_max_events, ttl_s=settings.log_ttl_s,
            subscriber_buffer=settings.subscriber_buffer, journal=journal,
            finished_max_events=settings.finished_logs_max_events,
            finished_max_bytes=settings.finished_logs_max_bytes, metrics=metrics))
        checkpointer = await stack.enter_async_context(open_checkpointer(settings))
        store = MemoryRunStore(journal=journal)
        if journal is not None:
            log_barrier(checkpointer, bus.flush)
            records, logs = await journal.load()
            bus.restore(logs)
            store.restore(records)
        lifecycle = Lifecycle(store=store, bus=bus, max_attempts=settings.max_attempts, metrics=metrics)
        from .gate.contexts import MemoryContextStore
        from .gate.presence import MemoryPresence

        gate = _gate(settings, bus, lifecycle, MemoryContextStore(
            inbox_max=settings.inbox_max_entries, inbox_ttl_s=settings.inbox_ttl_s), MemoryPresence())
        thread_store = MemoryThreadStore(journal)
        await thread_store.load()
        executor = _executor(settings, bus, store, lifecycle, registry, checkpointer,
                             durable_records=journal is not None, metrics=metrics)
        async with LocalRunner(executor=executor, store=store, lifecycle=lifecycle,
                               concurrency=settings.max_concurrent_runs,
                               policy=TenantPolicy.from_settings(settings),
                               on_dispatch=metrics.run_queued) as runner:
            await runner.recover(store.all())
            service = RunService(store=store, bus=bus, runner=runner, registry=registry,
                                 max_queued=settings.max_queued_runs, lifecycle=lifecycle,
                                 on_refused=metrics.rejected)
            threads = ThreadService(threads=thread_store, runs=service, registry=registry,
                                    checkpointer=checkpointer)
            await threads.sweep()
            async with stats_logger(settings.stats_log_s,
                                    {"bus": bus.stats, "store": store.stats, "runner": runner.stats}):
                yield Backend("memory", bus, store, runner, service, lifecycle, auth=MemoryAuthStore(),
                              metrics=metrics, overview=_overview(service, bus), threads=threads,
                              gate=gate)


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``redis+cluster://[user:password@]host:port[,host:port...]``: the startup nodes, and
    the credentials and TLS every node connection uses (a cluster has no database number)."""
    from urllib.parse import unquote

    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    creds, _, hosts = netloc.rpartition("@")
    kwargs: dict[str, Any] = {"ssl": scheme.lower().startswith("rediss")}
    if creds:
        user, _, password = creds.partition(":")
        kwargs.update(username=unquote(user) or None, password=unquote(password) or None)
    nodes = []
    for hostport in hosts.split(","):
        host, _, port = hostport.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis cluster URL {url!r}: each node must be host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes, kwargs


@asynccontextmanager
async def redis_connection(url: str, *, outage_s: float, max_connections: int = 64,
                           epoch_key: str | None = None) -> AsyncIterator[RedisOps]:
    """The process's Redis connections and retry policy, closed on the way out.
    ``epoch_key``: where the epoch lives that tells this process Redis lost its data.
    ``redis+cluster://host:port,host:port``: a Redis Cluster (``redis_keys`` says where the
    keys live; the bus fans out through shard channels)."""
    from redis.asyncio import BlockingConnectionPool, Redis  # lazy: no Redis import unless asked
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from .redis_ops import RedisOps

    if is_cluster_url(url):
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes, auth = cluster_nodes(url)
        # The cluster client follows MOVED/ASK and refreshes its slot map by itself; a node
        # that is down (a failover under way) surfaces as a connection error that
        # RedisOps.call rides out for outage_s, like a standalone Redis's restart.
        client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes],
                              max_connections=max_connections, socket_connect_timeout=2,
                              socket_timeout=5, **auth)
        # Pub/sub connections go to one node each (control channels to any node, run
        # channels to their shard's master): RedisOps opens them from the cluster's map.
        ops = RedisOps(client, pubsub_client=None, outage_s=outage_s, epoch_key=epoch_key,
                       cluster=True, node_options={"socket_connect_timeout": 2, **auth}, startup_nodes=nodes)
    else:
        # A bounded pool: a burst of subscribers reading history waits for a connection
        # instead of opening one each (and keeping them all open afterwards).
        pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=outage_s,
                                               socket_connect_timeout=2, socket_timeout=5)
        client = Redis(connection_pool=pool)
        # Pub/sub gets its own client that never retries by itself (see RedisOps).
        pubsub_client = Redis.from_url(url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        ops = RedisOps(client, pubsub_client=pubsub_client, outage_s=outage_s, epoch_key=epoch_key)
    try:
        yield ops
    finally:
        await ops.aclose()


def heartbeat_client(url: str, socket_timeout: float) -> Any:
    """A synchronous client for a worker's lease thread (runs/lease.py)."""
    if is_cluster_url(url):
        from redis.cluster import ClusterNode, RedisCluster

        nodes, auth = cluster_nodes(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], socket_connect_timeout=2,
                            socket_timeout=socket_timeout, **auth)
    from redis import Redis as SyncRedis

    return SyncRedis.from_url(url, socket_connect_timeout=2, socket_timeout=socket_timeout)


def _redis_checkpointer(settings: Settings, ops: RedisOps) -> Any:
    """The checkpointer of a Redis backend: on a cluster, by default the cluster itself (its
    keys are tagged by thread, so a checkpoint's MULTI stays on one shard)."""
    if ops.cluster and settings.checkpoint_url in (None, settings.redis_url):
        from contextlib import nullcontext

        from .runs.checkpoints import REDIS_CHECKPOINT_TTL_S
        from .runs.redis_checkpoints import RedisSaver

        return nullcontext(RedisSaver(ops.client, prefix=settings.key_prefix, ttl_s=REDIS_CHECKPOINT_TTL_S,
                                      call=ops.call))
    return open_checkpointer(settings, ops)


@asynccontextmanager
async def _open_redis(settings: Settings, registry: Any, with_worker: bool,
                      metrics: Metrics) -> AsyncIterator[Backend]:
    from .auth.store import RedisAuthStore
    from .bus.redis import RedisBus
    from .observability.redis_share import RedisMetricsShare
    from .runs.redis_queue import RedisQueue
    from .runs.redis_store import RedisRunStore
    from .runs.worker import Worker

    assert settings.redis_url is not None
    async with AsyncExitStack() as stack:
        ops = await stack.enter_async_context(
            redis_connection(settings.redis_url, outage_s=settings.redis_outage_s,
                             max_connections=settings.redis_max_connections,
                             epoch_key=redis_keys.epoch(settings.key_prefix)))
        # open_logs=False: the store starts each log with its record, so an append never
        # re-creates a log Redis lost (DESIGN.md, "When Redis forgets").
        bus = await stack.enter_async_context(RedisBus(
            ops, prefix=settings.key_prefix, max_events=settings.log_max_events,
            ttl_s=settings.log_ttl_s, subscriber_buffer=settings.subscriber_buffer,
            live_ttl_s=settings.run_timeout_s + settings.log_ttl_s, open_logs=False, metrics=metrics,
            wait_replicas=settings.redis_wait_replicas, wait_timeout_s=settings.redis_wait_timeout_s))
        # Entered before the worker, so it leaves after it: the last snapshot has its runs.
        share = await stack.enter_async_context(RedisMetricsShare(
            ops, metrics, prefix=settings.key_prefix, interval_s=settings.metrics_publish_s))
        store = RedisRunStore(ops, prefix=settings.key_prefix, fence_of=bus.fence_of)
        queue = RedisQueue(ops, bus, prefix=settings.key_prefix, policy=TenantPolicy.from_settings(settings))
        lifecycle = Lifecycle(store=store, bus=bus, max_attempts=settings.max_attempts, metrics=metrics)
        from .gate.contexts import RedisContextStore
        from .gate.presence import RedisPresence

        presence = await stack.enter_async_context(RedisPresence(
            ops, prefix=settings.key_prefix, process=metrics.process))
        gate = _gate(settings, bus, lifecycle, RedisContextStore(
            ops, prefix=settings.key_prefix, inbox_max=settings.inbox_max_entries,
            inbox_ttl_s=settings.inbox_ttl_s), presence)
        service = RunService(store=store, bus=bus, runner=queue, registry=registry,
                             max_queued=settings.max_queued_runs, lifecycle=lifecycle,
                             on_refused=metrics.rejected)
        # Every process opens the checkpointer: workers write threads' states, API processes
        # read them (GET /threads/{id}/state).
        checkpointer = await stack.enter_async_context(_redis_checkpointer(settings, ops))
        # The worker's events go to Redis in batches (RedisBus.emit): a checkpoint waits for
        # its run's batches first, so it is never ahead of the events its step emitted.
        log_barrier(checkpointer, bus.flush)
        threads = ThreadService(threads=RedisThreadStore(ops, prefix=settings.key_prefix), runs=service,
                                registry=registry, checkpointer=checkpointer)
        worker = None
        if with_worker:
            await threads.sweep()
            # The worker's heartbeat runs in a thread of its own (a stalled event loop must
            # not lose its leases), so it needs a synchronous client; closed after the worker.
            beat = heartbeat_client(settings.redis_url, socket_timeout=max(0.5, settings.worker_lease_s / 4))
            stack.callback(beat.close)
            worker = await stack.enter_async_context(Worker(
                queue=queue, bus=bus, store=store, lifecycle=lifecycle,
                executor=_executor(settings, bus, store, lifecycle, registry, checkpointer,
                                   durable_records=True, metrics=metrics),
                concurrency=settings.max_concurrent_runs, lease_s=settings.worker_lease_s,
                agents=settings.worker_agents, on_dispatch=metrics.run_queued, heartbeat_client=beat))
        yield Backend("redis-cluster" if ops.cluster else "redis", bus, store, queue, service, lifecycle, worker,
                      auth=RedisAuthStore(ops, bus, prefix=settings.key_prefix),
                      metrics=metrics, overview=_overview(service, bus), metric_peers=share.peers,
                      threads=threads, gate=gate)
