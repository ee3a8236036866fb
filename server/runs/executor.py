"""Execute one run: stream the graph, turn every chunk into an event (``chunks.py`` maps them).

The executor announces the transitions it makes (STATUS running, interrupted); how
the run ends — RESULT, ERROR, the one terminal STATUS — is written by the lifecycle
(``lifecycle.py``), which every other path that ends a run calls too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from ..bus.base import BackendUnavailable, Bus, Fenced, LogLost
from ..events import STATUS, STEP, dumps
from ..observability.logs import run_context
from .chunks import STREAM_MODES, ChunkMapper, agent_path, graph_output, lg_event, lg_output
from .lifecycle import LOG_LOST_REASON, SHUTDOWN_REASON, Lifecycle, RunHandle, to_the_end
from .store import INTERRUPTED, NO_ANSWER, RUNNING, InvalidTransition, RunRecord, RunStore

if TYPE_CHECKING:
    from ..observability.metrics import Metrics

log = logging.getLogger(__name__)


class Executor:
    """Runs graphs for records; one call of ``run`` per attempt."""

    def __init__(self, *, bus: Bus, store: RunStore, registry: Any, run_timeout_s: float,
                 lifecycle: Lifecycle | None = None, checkpointer: Any = None,
                 recoverable: bool = False, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.bus = bus
        self.store = store
        self.lifecycle = lifecycle or Lifecycle(store=store, bus=bus)
        self.registry = registry
        self.run_timeout_s = run_timeout_s
        self.checkpointer = checkpointer
        # True when records, logs and checkpoints all outlive this process: a shutdown then
        # leaves runs for recovery instead of failing them.
        self.recoverable = recoverable
        from ..agents.registry import CheckpointedGraphs

        self._graphs = CheckpointedGraphs(registry, checkpointer)

    def graph(self, agent: str) -> Any:
        """The agent's graph bound to our checkpointer (thread_id = run id), built once."""
        return self._graphs.get(agent)

    @staticmethod
    def config(run_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": run_id}, "metadata": {"run_id": run_id}}

    @staticmethod
    def run_config(rec: RunRecord, *, head: bool = False) -> dict[str, Any]:
        """The graph config of ``rec``: its own thread (thread_id = run id), or for a
        LangGraph thread run the thread, with the client's config, and the checkpoint to
        fork from (a rollback's); ``head``: the thread's newest checkpoint instead."""
        if rec.thread_id is None:
            return Executor.config(rec.run_id)
        opts = rec.lg or {}
        config = dict(opts.get("config") or {})
        configurable = {**(config.get("configurable") or {}), "thread_id": rec.thread_id}
        if opts.get("checkpoint_id") and not head:
            configurable["checkpoint_id"] = opts["checkpoint_id"]
        else:
            configurable.pop("checkpoint_id", None)
        config["configurable"] = configurable
        config["metadata"] = {**(config.get("metadata") or {}), **rec.metadata, "run_id": rec.run_id,
                              "thread_id": rec.thread_id, "graph_id": rec.agent,
                              "assistant_id": opts.get("assistant_id")}
        return config

    async def rewind_point(self, rec: RunRecord, graph: Any) -> tuple[Any, int, int]:
        """Where a recovered attempt starts: (graph input, rewind_to seq, step already logged).

        It continues from the newest checkpoint. That checkpoint's STEP event marks where
        its step ended in the log; what follows came from the step that runs again, so
        clients discard it (contract item 7). Every event a step emitted is in the log
        before its checkpoint is written (the Redis log is synchronous; the journaled log
        is flushed first, see ``log_barrier``), so a checkpoint whose STEP is missing means
        nothing after it was logged: rewind to the end, and let the re-announced
        checkpoint log its STEP. With no checkpoint the run starts over after its first STATUS.
        """
        bounds = await self.bus.bounds(rec.run_id)
        events = await self.bus.read(rec.run_id, bounds.first_seq - 1) if bounds else []
        last = events[-1].seq if events else 0
        state = await graph.aget_state(self.run_config(rec, head=True)) if self.checkpointer else None
        if state is not None and state.metadata is None:
            state = None  # no checkpoint at all (the attempt stopped before its first step)
        if state is not None and state.metadata.get("run_id") not in (None, rec.run_id):
            state = None  # a thread's newest checkpoint is an earlier run's: this one wrote none
        if state is not None and state.config.get("configurable", {}).get("checkpoint_id"):
            step = state.metadata.get("step")
            for e in reversed(events):
                if e.ns == STEP and e.data.get("step") == step:
                    return None, e.seq, step
            return None, last, step - 1
        first_running = next((e.seq for e in events if e.ns == STATUS
                              and e.data.get("state") == RUNNING), last)
        return self.first_input(rec), first_running, -2

    @staticmethod
    def first_input(rec: RunRecord) -> Any:
        """What the graph starts from: the run's input, or a thread run's input or Command."""
        if rec.thread_id is None:
            return rec.input
        opts = rec.lg or {}
        if opts.get("command"):
            from langgraph.types import Command

            return Command(**opts["command"])
        return opts.get("input")

    async def status(self, rec: RunRecord, state: str, **extra: Any) -> None:
        await self.bus.append(rec.run_id, STATUS, "server", {"state": state, **extra})

    async def run(self, rec: RunRecord, handle: RunHandle | None = None, *,
                  worker: str | None = None, recover: bool = False,
                  answer: Any = NO_ANSWER) -> RunRecord | None:
        """Execute ``rec`` to its end (or its next interrupt); ``handle`` says why a cancel came.

        ``recover``: the run was RUNNING on a worker that died; continue it from its last
        checkpoint in the same log, announcing the rewind first. ``answer``: the run was
        interrupted for a human; continue it with this value. Returns the record, or None
        when the run was cancelled or answered before this attempt could start, or lost.
        """
        with run_context(rec.run_id, rec.tenant, rec.agent):  # on every log line it causes
            try:
                return await self._attempt(rec, handle, worker=worker, recover=recover, answer=answer)
            except LogLost as exc:
                # Its log (or record) vanished: the backend lost its data. Nothing can be written
                # for it any more, not even its end (a new log would reuse seqs): stop, say so once.
                self._lost(rec.run_id, exc.why)
                return None

    @staticmethod
    def _lost(run_id: str, why: str) -> None:
        log.error("run %s stopped (log_lost): %s; nothing more is written for it", run_id, why)

    async def _attempt(self, rec: RunRecord, handle: RunHandle | None, *, worker: str | None,
                       recover: bool, answer: Any) -> RunRecord | None:
        run_id = rec.run_id
        try:
            graph = self.graph(rec.agent)
        except Exception as exc:  # e.g. a worker started without this agent
            return (await self.lifecycle.fail(run_id, "agent_unavailable", str(exc))).record
        mapper = ChunkMapper()
        started = time.monotonic()
        # The service validated it; min() keeps a per-run timeout within the server's maximum.
        timeout = min(float(rec.metadata.get("timeout_s") or self.run_timeout_s), self.run_timeout_s)
        try:
            try:
                rec, graph_input = await self._begin(rec, graph, mapper, worker, recover, answer)
            except InvalidTransition as exc:
                log.info("run %s not started: it is %s now", run_id, exc.current)
                return None
            async with asyncio.timeout(timeout):
                await self._stream(rec, graph, graph_input, mapper, handle)
        except asyncio.CancelledError as exc:
            try:
                await self._cancelled(run_id, handle.cancel_reason(exc) if handle else "cancelled")
            except LogLost as lost:  # the cancel still goes through; its ending had nowhere to go
                self._lost(run_id, lost.why)
            raise
        except TimeoutError:
            msg = f"run exceeded its timeout of {timeout:g} s"
            return (await self.lifecycle.fail(run_id, "timeout", msg)).record
        except (BackendUnavailable, LogLost, Fenced):
            # Not the graph's fault, and the ending could not be written either. Unavailable:
            # the run stays as it is and is recovered once the backend is back. Lost: ``run``
            # stops it. Fenced: another worker executes it now; this execution writes nothing.
            raise
        except Exception as exc:  # the graph failed; the run fails, the server does not
            if handle is not None and handle.reason is not None:
                # A cancel came, and the graph's machinery turned it into another error on
                # its way out: it is still that cancel.
                return await self._cancelled(run_id, handle.reason)
            log.warning("run %s failed: %s", run_id, exc, exc_info=True)
            return (await self.lifecycle.fail(run_id, type(exc).__name__,
                                              str(exc) or type(exc).__name__)).record
        # The graph is done: a cancel arriving now must not cut the record and the log
        # apart (a record that says interrupted with no event to say so, for one).
        return await to_the_end(self._conclude(rec, graph, mapper, time.monotonic() - started))

    async def _cancelled(self, run_id: str, reason: str) -> RunRecord | None:
        if reason == LOG_LOST_REASON:
            self._lost(run_id, "Redis lost its data while it ran")
            return None
        if reason == SHUTDOWN_REASON and self.recoverable:
            # Leave it running: the next start (or another worker) recovers it.
            log.info("run %s left for recovery after shutdown", run_id)
            return None
        if reason == SHUTDOWN_REASON:
            return (await self.lifecycle.fail(
                run_id, "shutdown", "the server shut down while the run was executing")).record
        return (await self.lifecycle.cancel(run_id, reason)).record

    async def _begin(self, rec: RunRecord, graph: Any, mapper: ChunkMapper, worker: str | None,
                     recover: bool, answer: Any) -> tuple[RunRecord, Any]:
        """Mark the attempt started; returns the record and the graph's input.
        InvalidTransition: the record moved on meanwhile (cancelled, answered)."""
        attempt = rec.attempt + 1
        if recover:
            graph_input, rewind_to, mapper.steps = await self.rewind_point(rec, graph)
            mapper.replaying = graph_input is None
            rec = await self.lifecycle.resumed(rec, attempt=attempt, rewind_to=rewind_to,
                                               worker=worker)
            return rec, graph_input
        if answer is not NO_ANSWER:
            from langgraph.types import Command

            mapper.steps = int(rec.progress.get("step", -2))  # its STEPs so far stay logged
            rec = await self.store.transition(rec.run_id, RUNNING, worker=worker)
            # The same execution, continued: not a new attempt.
            await self.status(rec, RUNNING, attempt=rec.attempt, answer=answer)
            return rec, Command(resume=answer)
        extra: dict[str, Any] = {}
        if rec.thread_id is not None and self.checkpointer is not None:
            # Where the thread stood when this run began (a rollback returns it there).
            head = await self.checkpointer.aget_tuple(self.run_config(rec))
            extra["progress"] = {**rec.progress,
                                 "checkpoint_before": head.config["configurable"]["checkpoint_id"] if head else None}
        rec = await self.store.transition(rec.run_id, RUNNING, started_at=time.time(),
                                          attempt=attempt, worker=worker, **extra)
        await self.status(rec, RUNNING, attempt=attempt)
        return rec, self.first_input(rec)

    async def _conclude(self, rec: RunRecord, graph: Any, mapper: ChunkMapper,
                        elapsed: float) -> RunRecord | None:
        run_id = rec.run_id
        if mapper.interrupts and rec.thread_id is not None:
            # A thread run ends at its interrupt: the thread waits for the answer (a later
            # run's Command(resume=...)), not this run.
            interrupts = orjson.loads(dumps(mapper.interrupts))
            now = await self.store.get(run_id) or rec  # its progress has the checkpoint it reached
            await self.store.update(run_id, progress={**now.progress, "step": mapper.steps,
                                                      "interrupts": interrupts})
            result = orjson.loads(dumps(lg_output(graph, mapper.output)))
            return (await self.lifecycle.succeed(run_id, result, duration_s=round(elapsed, 3))).record
        if mapper.interrupts:
            interrupts = orjson.loads(dumps(mapper.interrupts))
            try:
                rec = await self.store.transition(run_id, INTERRUPTED, progress={
                    "step": mapper.steps, "interrupts": interrupts})
            except InvalidTransition as exc:  # ended meanwhile by someone else
                log.info("run %s not interrupted: it is %s now", run_id, exc.current)
                return None
            await self.status(rec, INTERRUPTED, interrupts=interrupts)
            return rec
        output = lg_output(graph, mapper.output) if rec.thread_id is not None else graph_output(graph, mapper.output)
        result = orjson.loads(dumps(output))  # JSON-safe
        return (await self.lifecycle.succeed(run_id, result, duration_s=round(elapsed, 3))).record

    async def _stream(self, rec: RunRecord, graph: Any, graph_input: Any, mapper: ChunkMapper,
                      handle: RunHandle | None = None) -> None:
        clock = self.metrics.step_clock(rec.agent, agent_path) if self.metrics is not None else None
        kwargs: dict[str, Any] = {}
        threaded = rec.thread_id is not None
        if threaded:
            opts = rec.lg or {}
            for key in ("context", "interrupt_before", "interrupt_after"):
                if opts.get(key) is not None:
                    kwargs[key] = opts[key]
        # durability="sync": each step's checkpoint is written before the next step begins,
        # so a crash re-runs at most the step it interrupted.
        async for namespace, mode, chunk in graph.astream(
            graph_input, self.run_config(rec), stream_mode=STREAM_MODES, subgraphs=True,
            durability="sync", **kwargs,
        ):
            if handle is not None and handle.reason is not None:
                raise asyncio.CancelledError(handle.reason)  # a cancel the loop swallowed
            if threaded:
                await self._lg_chunk(rec, mapper, namespace, mode, chunk)
                if mode == "tasks" and clock is not None:
                    clock.task(namespace, chunk)
                continue
            if mode == "tasks":
                if clock is not None:
                    clock.task(namespace, chunk)
                continue
            mapped = mapper.map(namespace, mode, chunk)
            if mapped is None:
                continue
            ns, agent, data = mapped
            await self.bus.emit(rec.run_id, ns, agent, data)
            if ns == STATUS and self.metrics is not None and data.get("state") == "retrying":
                self.metrics.retried(rec.agent, str(data.get("node") or agent))  # agents/retry.py's
            if ns == STEP:
                await self.store.update(rec.run_id, progress={"step": mapper.steps, "next": data["next"]})

    async def _lg_chunk(self, rec: RunRecord, mapper: ChunkMapper, namespace: tuple[str, ...],
                        mode: str, chunk: Any) -> None:
        """A thread run's chunk: logged as LangGraph sent it (``lg.<mode>``), and the
        chunks the run's own bookkeeping needs mapped as for any run (STEP, output,
        interrupts)."""
        if mapper.replaying:
            if not namespace and mode in ("values", "checkpoints"):
                mapper.map(namespace, mode, chunk)  # the output so far, and no STEP twice
                return
            mapper.replaying = False
        ns, data = lg_event(namespace, mode, chunk)
        agent = agent_path(namespace, chunk[1].get("langgraph_node") if mode == "messages" else None)
        await self.bus.emit(rec.run_id, ns, agent, data)
        if mode in ("checkpoints", "values", "updates"):
            mapped = mapper.map(namespace, mode, chunk)
            if mapped is not None and mapped[0] == STEP:
                await self.bus.emit(rec.run_id, STEP, "graph", mapped[2])
                # Where the run stands on its thread: the thread's head moves here when it ends.
                checkpoint = chunk["config"]["configurable"].get("checkpoint_id")
                await self.store.update(rec.run_id, progress={**rec.progress, "step": mapper.steps,
                                                              "next": mapped[2]["next"],
                                                              "checkpoint": checkpoint})
