# Run:  python examples/03_reconnect_demo.py             (with `thoughtstream serve` on 127.0.0.1:8000)
#       python examples/03_reconnect_demo.py --url http://127.0.0.1:8000 --drop-every 20
"""Drop the connection mid-run, resume with Last-Event-ID, and prove nothing was lost or repeated.

Starts a run of the ``reflective`` agent, reads ``--drop-every`` events, hangs up, waits a
moment while the run keeps going on the server, and reconnects with the last id it saw, again
and again until the terminal STATUS event. Then it reads the whole log once more from the start
and compares: the pieces put together must be exactly the log. Exits 1 if anything is off.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

import httpx
from httpx_sse import connect_sse

TERMINAL = {"succeeded", "failed", "cancelled"}


def read(client: httpx.Client, run_id: str, after: int | None, limit: int | None) -> tuple[list[dict], bool]:
    """Read up to ``limit`` events after ``after``; returns (events, reached_the_end)."""
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    events: list[dict] = []
    with connect_sse(client, "GET", f"/runs/{run_id}/events", headers=headers) as source:
        source.response.raise_for_status()
        for sse in source.iter_sse():
            if not sse.data:
                continue
            event = json.loads(sse.data)
            events.append(event)
            if event["ns"] == "STATUS" and event["data"].get("state") in TERMINAL:
                return events, True
            if limit is not None and len(events) >= limit:
                return events, False  # leaving the block closes the connection: a hard drop
    return events, False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the thoughtstream server")
    parser.add_argument("--drop-every", type=int, default=25, help="hang up after this many events")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds to stay away before reconnecting")
    parser.add_argument("--question", default="What is 17 times 23, and what does the corpus say about Redis?")
    args = parser.parse_args()

    with httpx.Client(base_url=args.url, timeout=httpx.Timeout(10.0, read=45.0)) as client:
        resp = client.post("/runs", json={"agent": "reflective", "input": {"question": args.question}})
        resp.raise_for_status()
        run_id = resp.json()["run_id"]
        print(f"run {run_id} started")

        received: list[dict] = []
        connections = 0
        while True:
            cursor = received[-1]["seq"] if received else None
            events, ended = read(client, run_id, cursor, args.drop_every)
            connections += 1
            received += events
            if ended:
                break
            status = client.get(f"/runs/{run_id}").json()["status"]
            print(f"dropped the connection after seq {received[-1]['seq'] if received else 0} "
                  f"(run is {status}); reconnecting in {args.pause:g}s with Last-Event-ID")
            time.sleep(args.pause)

        full, _ = read(client, run_id, None, None)  # the whole log, from the start

    seqs = [e["seq"] for e in received]
    duplicates = sum(n - 1 for n in Counter(seqs).values())
    missing = len(set(range(1, max(seqs) + 1)) - set(seqs))
    out_of_order = sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)
    same = received == full
    print(f"received {len(received)} events over {connections} connections: "
          f"duplicates {duplicates}, missing {missing}, out of order {out_of_order}; "
          f"identical to the full log ({len(full)} events): {'yes' if same else 'NO'}")
    print(f"run ended {received[-1]['data']['state']}")
    return 0 if (duplicates, missing, out_of_order, same) == (0, 0, 0, True) else 1


if __name__ == "__main__":
    sys.exit(main())
