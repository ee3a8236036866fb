# Serve it:   thoughtstream serve --agent research=examples/04_custom_graph.py:graph
# Run it:     python examples/06_langgraph_sdk.py [--url http://127.0.0.1:8000] [--cut 3]
"""LangGraph's own Python SDK against thoughtstream: stream a run, drop it, rejoin exactly.

The official ``langgraph-sdk`` needs no change: ``get_client(url=...)`` and its usual calls.
What differs is the resume: every event carries ``id:`` (the run's seq), so
``join_stream(last_event_id=...)`` continues strictly after the last event this client
got — for every run, not only ``stream_resumable`` ones — and a finished run replays
and ends at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from langgraph_sdk import get_client


async def main(url: str, cut: int) -> int:
    client = get_client(url=url)
    thread = await client.threads.create(metadata={"example": "06"})
    modes = ["custom", "updates", "values"]
    seen: list[tuple[str, str]] = []
    run_id = None
    # The first connection: leave after `cut` events, as a dropped network would.
    async for part in client.runs.stream(thread["thread_id"], "research", input={"topic": "sse events"},
                                         stream_mode=modes):
        if part.event == "metadata":
            run_id = part.data["run_id"]
        seen.append((part.id, part.event))
        if len(seen) >= cut:
            break
    assert run_id is not None
    print(f"cut after {len(seen)} events (last id {seen[-1][0]}); rejoining")
    async for part in client.runs.join_stream(thread["thread_id"], run_id, last_event_id=seen[-1][0],
                                              stream_mode=modes):
        seen.append((part.id, part.event))
    # The whole run, replayed from the start: what an uncut client would have received.
    full = [(p.id, p.event) async for p in client.runs.join_stream(
        thread["thread_id"], run_id, last_event_id="-1", stream_mode=modes)]
    state = await client.threads.get_state(thread["thread_id"])
    exact = seen == full
    print(f"{len(seen)} events with one cut, {len(full)} in the replay: "
          f"{'exact, nothing missing or repeated' if exact else 'MISMATCH'}")
    print("notes:", len(state["values"].get("notes", [])), "| thread:",
          (await client.threads.get(thread["thread_id"]))["status"])
    return 0 if exact else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--cut", type=int, default=3, help="events to read before dropping the stream")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.url, args.cut)))
