"""LangGraph threads and their runs: what the LangGraph protocol's endpoints ask of the server.

A thread run is an ordinary run (same queue, fair share, log, lifecycle) with
``thread_id`` set: the executor checkpoints it under the thread, so a thread's state is
the checkpointer's and every worker shares it. What is thread-specific lives here:

- one run at a time per thread. A run submitted to a busy thread follows its
  ``multitask_strategy``: ``reject`` (409), ``enqueue`` (it waits, *parked*, and starts
  when the runs before it end), ``interrupt`` (the running run is stopped, its checkpoints
  kept, and the new one continues from them), ``rollback`` (the running run is stopped and
  deleted, and the thread returns to where it stood before it);
- the thread's status, read from its runs and its checkpoints, never stored;
- assistants: one per registered agent, with the official servers' ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson

from ..events import dumps
from ..runs.service import Conflict, InvalidRequest, NotFound, RunService
from ..runs.store import FAILED, RunRecord
from .store import EMPTY, ThreadRecord, ThreadStore

log = logging.getLogger(__name__)

# The namespace the official servers derive default assistant ids from (uuid5 of the graph id).
ASSISTANT_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
STRATEGIES = ("reject", "enqueue", "interrupt", "rollback")
INTERRUPTED_BY_RUN = "interrupted by a newer run on its thread (multitask_strategy interrupt)"
ROLLED_BACK = "rolled back (multitask_strategy or cancel action rollback)"
THREAD_RUNS_SCAN = 500


def assistant_id(graph_id: str) -> str:
    return str(uuid.uuid5(ASSISTANT_NAMESPACE, graph_id))


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def jsonable(value: Any) -> Any:
    return orjson.loads(dumps(value))


def parked(rec: RunRecord) -> bool:
    return bool(rec.progress.get("parked"))


def hidden(rec: RunRecord) -> bool:
    """A rolled-back run: gone for the protocol from the moment it was rolled back."""
    return bool((rec.lg or {}).get("rolled_back"))


class ThreadService:
    def __init__(self, *, threads: ThreadStore, runs: RunService, registry: Any,
                 checkpointer: Any, started_at: float | None = None) -> None:
        self.threads = threads
        self.runs = runs
        self.store = runs.store
        self.registry = registry
        self.checkpointer = checkpointer
        self.started_at = started_at or time.time()
        from ..agents.registry import CheckpointedGraphs

        self._graphs = CheckpointedGraphs(registry, checkpointer)
        self._locks: dict[str, asyncio.Lock] = {}
        self.gate = runs.lifecycle.gate  # a thread is its runs' delivery context
        runs.lifecycle.on_ending.append(self.run_ending)
        runs.lifecycle.on_end.append(self.run_ended)

    # -- assistants -------------------------------------------------------------
    def assistants(self) -> list[dict[str, Any]]:
        return [self.assistant(name) for name in self.registry.names()]

    def assistant(self, name: str) -> dict[str, Any]:
        spec = self.registry.get(name)
        created = iso(self.started_at)
        return {"assistant_id": assistant_id(name), "graph_id": name, "name": name,
                "description": spec.description or None, "config": {}, "context": {},
                "metadata": {"created_by": "system"}, "version": 1,
                "created_at": created, "updated_at": created}

    def resolve_assistant(self, ident: str) -> str:
        """The agent an assistant id (its uuid5, or the graph name) stands for."""
        if ident in self.registry:
            return ident
        for name in self.registry.names():
            if assistant_id(name) == ident:
                return name
        raise NotFound(f"unknown assistant {ident!r}; POST /assistants/search lists them")

    def graph(self, agent: str) -> Any:
        return self._graphs.get(agent)

    # -- threads ----------------------------------------------------------------
    async def create_thread(self, *, tenant: str, thread_id: str | None, metadata: dict[str, Any],
                            if_exists: str, ephemeral: bool = False) -> ThreadRecord:
        rec = ThreadRecord(thread_id=thread_id or str(uuid.uuid4()), tenant=tenant, metadata=metadata,
                           ephemeral=ephemeral)
        stored, created = await self.threads.create(rec)
        if created:
            return stored
        if stored.tenant != tenant:
            # Another tenant's thread id: it exists, but not for this caller. Taking it over
            # would leak; a new id is the caller's to choose.
            raise Conflict(f"thread {rec.thread_id!r} cannot be created; choose another thread_id")
        if if_exists == "do_nothing":
            return stored
        raise Conflict(f"thread {rec.thread_id!r} already exists")

    async def get_thread(self, thread_id: str, *, tenant: str | None, ephemeral: bool = False) -> ThreadRecord:
        """The thread, if ``tenant``'s. A threadless run's own thread is found only with
        ``ephemeral`` (its runs' endpoints): to the thread endpoints it does not exist, as
        the official servers delete it once the run is done."""
        rec = await self.threads.get(thread_id)
        if rec is None or (tenant is not None and rec.tenant != tenant) or (rec.ephemeral and not ephemeral):
            raise NotFound(f"unknown thread {thread_id!r}")
        return rec

    async def search_threads(self, *, tenant: str | None, metadata: dict[str, Any] | None,
                             status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        if status is None:
            rows = await self.threads.search(tenant=tenant, metadata=metadata, limit=limit, offset=offset)
            return [await self.thread_view(r) for r in rows if not r.ephemeral]
        out: list[dict[str, Any]] = []
        skipped, page_offset = 0, 0
        while len(out) < limit:
            rows = await self.threads.search(tenant=tenant, metadata=metadata, limit=100, offset=page_offset)
            if not rows:
                break
            page_offset += len(rows)
            for r in rows:
                if r.ephemeral:
                    continue
                view = await self.thread_view(r)
                if view["status"] != status:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(view)
                if len(out) == limit:
                    break
        return out

    async def delete_thread(self, thread_id: str, *, tenant: str | None) -> None:
        rec = await self.get_thread(thread_id, tenant=tenant)
        for run in await self.thread_runs(thread_id):
            if not run.terminal:
                await self.runs.cancel(run.run_id, tenant=None, reason="its thread was deleted")
        await self.threads.delete(thread_id)
        for run in await self.thread_runs(thread_id, include_hidden=True):
            await self.store.delete(run.run_id)
        if self.checkpointer is not None:
            await self.checkpointer.adelete_thread(rec.thread_id)

    async def thread_runs(self, thread_id: str, *, include_hidden: bool = False) -> list[RunRecord]:
        """The thread's runs, newest first."""
        rows = await self.store.list(tenant=None, thread_id=thread_id, limit=THREAD_RUNS_SCAN)
        return rows if include_hidden else [r for r in rows if not hidden(r)]

    async def state(self, thread: ThreadRecord, *, checkpoint_id: str | None = None,
                    subgraphs: bool = False) -> dict[str, Any]:
        """The thread's state as LangGraph's ThreadState (``checkpoint: null`` when fresh)."""
        agent = thread.metadata.get("graph_id")
        if agent not in self.registry or self.checkpointer is None:
            return empty_state()
        checkpoint_id = checkpoint_id or thread.head
        if checkpoint_id == EMPTY:
            return empty_state()
        config: dict[str, Any] = {"configurable": {"thread_id": thread.thread_id}}
        if checkpoint_id:
            config["configurable"]["checkpoint_id"] = checkpoint_id
        snap = await self.graph(agent).aget_state(config, subgraphs=subgraphs)
        if not snap.config.get("configurable", {}).get("checkpoint_id"):
            if checkpoint_id and checkpoint_id != thread.head:
                raise NotFound(f"unknown checkpoint {checkpoint_id!r} of thread {thread.thread_id!r}")
            return empty_state()
        return state_view(snap)

    async def update_state(self, thread: ThreadRecord, *, values: Any, as_node: str | None,
                           checkpoint_id: str | None) -> dict[str, Any]:
        """Write ``values`` to the thread as if ``as_node`` returned them; a busy thread is a 409."""
        agent = thread.metadata.get("graph_id")
        if agent not in self.registry or self.checkpointer is None:
            raise Conflict(f"thread {thread.thread_id!r} has no graph yet: run it once first")
        if any(not r.terminal for r in await self.thread_runs(thread.thread_id)):
            raise Conflict(f"thread {thread.thread_id!r} is busy")
        config: dict[str, Any] = {"configurable": {"thread_id": thread.thread_id, "checkpoint_ns": ""}}
        checkpoint_id = checkpoint_id or thread.head
        if checkpoint_id:
            config["configurable"]["checkpoint_id"] = checkpoint_id
        try:
            new = await self.graph(agent).aupdate_state(config, values, as_node=as_node)
        except (ValueError, KeyError, TypeError) as exc:  # LangGraph's InvalidUpdateError is a ValueError
            raise InvalidRequest(f"state update refused: {exc}") from None
        await self.move_head(thread, new["configurable"]["checkpoint_id"])
        return {"checkpoint": _checkpoint(new)}

    async def head_version(self, thread: ThreadRecord) -> str | None:
        """The checkpoint the thread stands at (its delivery context's version)."""
        if thread.head is not None:
            return thread.head
        if self.checkpointer is None:
            return None
        tup = await self.checkpointer.aget_tuple({"configurable": {"thread_id": thread.thread_id,
                                                                   "checkpoint_ns": ""}})
        return tup.config["configurable"]["checkpoint_id"] if tup else None

    async def move_head(self, thread: ThreadRecord, head: str | None) -> None:
        """The thread now stands at ``head``: its context's version moves with it."""
        await self.threads.update(thread.thread_id, head=head, updated_at=time.time())
        if self.gate is not None:
            await self.gate.set_version(thread.tenant, thread.thread_id, head)

    def _gate_context(self, body: dict[str, Any], thread_id: str, version: str | None) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        on_stale = meta.get("on_stale") if meta.get("on_stale") in ("mark", "hold") else "mark"
        within = meta.get("deliver_within_s")
        ok = isinstance(within, (int, float)) and not isinstance(within, bool) and within > 0
        return {"key": thread_id, "version": version, "on_stale": on_stale,
                "deliver_within_s": float(within) if ok else None}

    async def history(self, thread: ThreadRecord, *, limit: int, before: str | None,
                      metadata: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Newest first, along the head's lineage (a rolled-back branch is not history)."""
        agent = thread.metadata.get("graph_id")
        if agent not in self.registry or self.checkpointer is None:
            return []
        graph = self.graph(agent)
        config = {"configurable": {"thread_id": thread.thread_id}}
        if thread.head == EMPTY:
            return []
        snaps = {s.config["configurable"]["checkpoint_id"]: s async for s in graph.aget_state_history(config)}
        if thread.head:
            cursor: str | None = thread.head
        else:
            head = await graph.aget_state(config)
            cursor = head.config.get("configurable", {}).get("checkpoint_id")
        out: list[dict[str, Any]] = []
        started = before is None
        while cursor is not None and cursor in snaps and len(out) < limit:
            snap = snaps[cursor]
            if started and (not metadata or all(snap.metadata.get(k) == v for k, v in metadata.items())):
                out.append(state_view(snap))
            if cursor == before:
                started = True
            parent = snap.parent_config
            cursor = parent["configurable"].get("checkpoint_id") if parent else None
        return out

    async def status(self, thread: ThreadRecord, runs: list[RunRecord] | None = None) -> tuple[str, dict[str, Any]]:
        """(status, interrupts by task id) of a thread: busy while a run is not over;
        else error if its last run failed, interrupted if its state waits on interrupts."""
        runs = runs if runs is not None else await self.thread_runs(thread.thread_id)
        if any(not r.terminal for r in runs):
            return "busy", {}
        state = await self.state(thread)
        interrupts: dict[str, Any] = {}
        for task in state["tasks"]:
            if task.get("interrupts"):
                interrupts[task["id"]] = task["interrupts"]
        if runs and runs[0].status == FAILED:
            return "error", {}
        if interrupts or state["next"]:
            # Waiting on an interrupt(), or stopped before its end (interrupt_before/after,
            # a cancel mid-graph): the official servers call both interrupted.
            return "interrupted", interrupts
        return "idle", {}

    async def thread_view(self, thread: ThreadRecord) -> dict[str, Any]:
        status, interrupts = await self.status(thread)
        state = await self.state(thread) if status != "busy" else None
        return {"thread_id": thread.thread_id, "created_at": iso(thread.created_at),
                "updated_at": iso(thread.updated_at), "metadata": thread.metadata, "status": status,
                "values": state["values"] if state and state["checkpoint"] else None,
                "interrupts": interrupts, "config": {}, "error": None}

    # -- runs on threads --------------------------------------------------------
    def _lock(self, thread_id: str) -> asyncio.Lock:
        lock = self._locks.get(thread_id)
        if lock is None:
            lock = self._locks[thread_id] = asyncio.Lock()
        return lock

    async def submit(self, *, thread: ThreadRecord, agent: str, body: dict[str, Any], tenant: str,
                     sub: str | None) -> RunRecord:
        """Start a run on ``thread`` (the multitask strategy decides what a busy thread does)."""
        strategy = body.get("multitask_strategy") or "enqueue"  # the official servers' default
        if strategy not in STRATEGIES:
            raise InvalidRequest(f"multitask_strategy must be one of {list(STRATEGIES)}",
                                 field="multitask_strategy")
        opts = {k: body.get(k) for k in ("input", "command", "config", "context", "interrupt_before",
                                         "interrupt_after", "stream_mode", "stream_subgraphs")}
        opts.update(assistant_id=assistant_id(agent), multitask_strategy=strategy,
                    checkpoint_id=(body.get("checkpoint_id")
                                   or ((body.get("checkpoint") or {}).get("checkpoint_id"))))
        command = opts.get("command")
        if command is not None:
            await self._check_resume(thread, agent, command)
        async with self._lock(thread.thread_id):  # one decision at a time per thread, here
            active = [r for r in await self.thread_runs(thread.thread_id) if not r.terminal]
            if active and strategy == "reject":
                raise Conflict(f"thread {thread.thread_id!r} is busy with run {active[0].run_id}; "
                               "multitask_strategy reject", run_id=active[0].run_id)
            if active and strategy == "rollback":
                opts["rollback_of"] = [r.run_id for r in active]
            if thread.metadata.get("graph_id") != agent:
                thread = await self.threads.update(
                    thread.thread_id, metadata={**thread.metadata, "graph_id": agent,
                                                "assistant_id": assistant_id(agent)},
                    updated_at=time.time()) or thread
            else:
                await self.threads.update(thread.thread_id, updated_at=time.time())
            if not active and thread.head is not None:
                opts["checkpoint_id"] = opts.get("checkpoint_id") or thread.head
            version = await self.head_version(thread)
            rec, _ = await self.runs.submit(agent, None, metadata=body.get("metadata") or {},
                                            tenant=tenant, sub=sub, thread_id=thread.thread_id,
                                            lg=jsonable(opts), start=not active,
                                            context=self._gate_context(body, thread.thread_id, version))
        if active and strategy in ("interrupt", "rollback"):
            for run in active:
                if strategy == "rollback":
                    await self.store.update(run.run_id, lg={**(run.lg or {}), "rolled_back": True})
                await self.runs.cancel(run.run_id, tenant=None, wait_s=0,
                                       reason=INTERRUPTED_BY_RUN if strategy == "interrupt" else ROLLED_BACK)
        if active:
            await self.advance(thread.thread_id)  # they may all have ended already
        return rec

    async def _check_resume(self, thread: ThreadRecord, agent: str, command: Any) -> None:
        """A ``command.resume`` answers an interrupt the thread waits on; else 409, nothing changes."""
        if not isinstance(command, dict):
            raise InvalidRequest("command must be an object {resume?, update?, goto?}", field="command")
        unknown = set(command) - {"resume", "update", "goto"}
        if unknown:
            raise InvalidRequest(f"command: unknown keys {sorted(unknown)}", field="command")
        if "resume" not in command:
            return
        state = await self.state(thread)
        pending = {i["id"] for t in state["tasks"] for i in t.get("interrupts") or () if i.get("id")}
        if not pending:
            raise Conflict(f"thread {thread.thread_id!r} has no pending interrupt to resume")
        resume = command["resume"]
        if isinstance(resume, dict) and resume and all(isinstance(k, str) and len(k) == 32 for k in resume):
            missing = set(resume) - pending
            if missing and not (set(resume) & pending):
                raise Conflict(f"no pending interrupt with id {sorted(missing)[0]!r} on thread "
                               f"{thread.thread_id!r}", pending=sorted(pending))

    async def cancel(self, run: RunRecord, *, action: str, wait: bool) -> None:
        if action not in ("interrupt", "rollback"):
            raise InvalidRequest("action must be interrupt or rollback", field="action")
        if action == "rollback":
            await self.store.update(run.run_id, lg={**(run.lg or {}), "rolled_back": True,
                                                    "rollback_self": True})
        if run.terminal and action == "interrupt":
            raise Conflict(f"run {run.run_id!r} already ended; nothing to cancel", status=run.status)
        if not run.terminal:
            try:
                await self.runs.cancel(run.run_id, tenant=None, wait_s=5.0 if wait else 0,
                                       reason=ROLLED_BACK if action == "rollback" else "cancelled by client")
            except (Conflict, NotFound):
                pass  # it ended meanwhile (a rolled-back run is gone once it has)
        else:
            await self._roll_back(run)

    async def run_ending(self, rec: RunRecord) -> None:
        """Lifecycle hook, before the terminal event: the thread stands where the run left
        it (unless held or rolled back), so a client that saw the end reads the new state."""
        if rec.thread_id is None:
            return
        fresh = await self.store.get(rec.run_id) or rec
        thread = await self.threads.get(rec.thread_id)
        if (fresh.lg or {}).get("rollback_self"):
            await self._roll_back(fresh)
        elif thread is not None and hidden(fresh):
            pass  # rolled back by a newer run: that run's start returns the thread
        elif thread is not None and (fresh.delivery or {}).get("held"):
            # Held (not fresh, on_stale hold): its checkpoints stay a branch until delivered.
            if thread.head is None:
                before = fresh.progress.get("checkpoint_before")
                await self.threads.update(thread.thread_id, head=before or EMPTY)
        elif thread is not None and fresh.progress.get("checkpoint"):
            await self.move_head(thread, fresh.progress["checkpoint"])

    async def run_ended(self, rec: RunRecord) -> None:
        """Lifecycle hook, after the ending: the thread may start its next run."""
        if rec.thread_id is None:
            return
        await self.threads.update(rec.thread_id, updated_at=time.time())
        await self.advance(rec.thread_id)

    async def deliver(self, rec: RunRecord) -> None:
        """A held thread run delivered anyway: the thread moves to where the run ended."""
        thread = await self.threads.get(rec.thread_id) if rec.thread_id else None
        if thread is not None and rec.progress.get("checkpoint"):
            await self.move_head(thread, rec.progress["checkpoint"])

    async def advance(self, thread_id: str) -> None:
        """Start the thread's oldest parked run if nothing else of the thread is going on."""
        async with self._lock(thread_id):
            runs = await self.thread_runs(thread_id, include_hidden=True)
            active = [r for r in runs if not r.terminal]
            if not active or any(not parked(r) for r in active):
                return
            nxt = min(active, key=lambda r: r.created_at)
            for old in (nxt.lg or {}).get("rollback_of") or ():
                rec = await self.store.get(old)
                if rec is not None:
                    await self._roll_back(rec)
            thread = await self.threads.get(thread_id)
            lg = dict(nxt.lg or {})
            context = dict(nxt.context or {})
            if thread is not None:
                if thread.head is not None:
                    lg["checkpoint_id"] = thread.head  # it starts where the thread stands now
                context["version"] = await self.head_version(thread)
            try:
                rec = await self.store.update(nxt.run_id, lg=lg, context=context or None,
                                              progress={k: v for k, v in nxt.progress.items() if k != "parked"})
            except Exception:  # noqa: BLE001 - ended meanwhile (cancelled): nothing to start
                return
            if rec.terminal or parked(rec):
                return
            await self.runs.runner.enqueue(rec)

    async def _roll_back(self, run: RunRecord) -> None:
        """Return the thread to where it stood before ``run`` began, and forget ``run``."""
        before = run.progress.get("checkpoint_before", "never started")
        thread = await self.threads.get(run.thread_id) if run.thread_id else None
        if thread is not None and before != "never started":
            # Its checkpoints stay in the checkpointer, off the thread's line (history walks
            # from the head), as a branch nobody stands on.
            await self.move_head(thread, before or EMPTY)
        await self.store.delete(run.run_id)

    async def sweep(self) -> None:
        """At start-up: threads whose parked runs lost the ending that would start them."""
        seen: set[str] = set()
        for rec in await self.store.list(tenant=None, status="queued", limit=1000):
            if rec.thread_id is not None and parked(rec) and rec.thread_id not in seen:
                seen.add(rec.thread_id)
                await self.advance(rec.thread_id)


def empty_state() -> dict[str, Any]:
    return {"values": {}, "next": [], "tasks": [], "checkpoint": None, "metadata": {},
            "created_at": None, "parent_checkpoint": None, "interrupts": []}


def _checkpoint(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if not config:
        return None
    c = config.get("configurable", {})
    return {"thread_id": c.get("thread_id"), "checkpoint_ns": c.get("checkpoint_ns", ""),
            "checkpoint_id": c.get("checkpoint_id"), "checkpoint_map": c.get("checkpoint_map")}


def state_view(snap: Any) -> dict[str, Any]:
    """A LangGraph StateSnapshot as the protocol's ThreadState (JSON-safe)."""
    tasks = []
    for t in snap.tasks:
        sub = t.state
        tasks.append({"id": t.id, "name": t.name, "path": list(t.path) if t.path else None,
                      "error": str(t.error) if t.error else None,
                      "interrupts": jsonable(list(t.interrupts)),
                      "checkpoint": _checkpoint(sub) if isinstance(sub, dict) else None,
                      "state": state_view(sub) if sub is not None and not isinstance(sub, dict) else None,
                      "result": jsonable(t.result) if getattr(t, "result", None) is not None else None})
    return {"values": jsonable(snap.values), "next": list(snap.next), "tasks": tasks,
            "checkpoint": _checkpoint(snap.config), "metadata": jsonable(snap.metadata),
            "created_at": snap.created_at, "parent_checkpoint": _checkpoint(snap.parent_config),
            "interrupts": jsonable(list(getattr(snap, "interrupts", ()) or ()))}
