# Run:  python examples/02_sse_client.py                 (with `thoughtstream serve` on 127.0.0.1:8000)
#       python examples/02_sse_client.py --url http://127.0.0.1:8000 --question "What is 2 to the power of 10?"
#       python examples/02_sse_client.py --run <run_id>   (watch a run that already exists)
"""A Python SSE client for thoughtstream (httpx + httpx-sse) that survives dropped connections.

It prints every event as it arrives and remembers the last ``id:`` it saw. When the connection
drops (server restart, proxy timeout, flaky network), it waits the server's ``retry:`` delay and
reconnects with ``Last-Event-ID``: the server replays exactly the events it missed, then the
live ones. It exits when the terminal ``STATUS`` event arrives: 0 if the run succeeded, 1 if it
failed or was cancelled, 2 on a client error (unknown run, bad cursor).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import httpx
from httpx_sse import connect_sse

TERMINAL = {"succeeded", "failed", "cancelled"}


def start_run(client: httpx.Client, question: str) -> str:
    resp = client.post("/runs", json={"agent": "reflective", "input": {"question": question}})
    resp.raise_for_status()
    body = resp.json()
    print(f"started run {body['run_id']} ({resp.status_code}, status {body['status']})")
    return body["run_id"]


def show(event: dict) -> None:
    data = event["data"]
    text = data["text"] if set(data) == {"text"} else json.dumps(data, separators=(",", ":"))
    if len(text) > 110:
        text = text[:107] + "..."
    print(f"{event['seq']:5d} {event['ns']:<12} {event['agent']:<12} {text}", flush=True)


def watch(client: httpx.Client, run_id: str, retry_s: float | None = None, max_attempts: int = 30) -> int:
    """Follow ``run_id`` to its terminal event, reconnecting with Last-Event-ID; returns the exit code.

    ``retry_s``: the pause before a reconnect; by default the server's ``retry:`` value.
    """
    last_id: str | None = None
    server_decides = retry_s is None
    retry_s = 2.0 if retry_s is None else retry_s
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(client, "GET", f"/runs/{run_id}/events", headers=headers) as source:
                resp = source.response
                if resp.status_code == 410 and last_id is not None:
                    # Our cursor is older than what the server keeps: say so, then take what is left.
                    print(f"! {resp.read().decode()} -- restarting from the oldest retained event")
                    last_id = None
                    continue
                if resp.status_code != 200:
                    print(f"! {resp.status_code}: {resp.read().decode()}", file=sys.stderr)
                    return 2
                failures = 0
                for sse in source.iter_sse():
                    if sse.retry is not None and server_decides:
                        retry_s = sse.retry / 1000
                    if not sse.data:
                        continue  # the retry: frame (keep-alive comments never reach here with data)
                    if sse.event == "reset":
                        print(f"! reset: {sse.data}")
                        continue
                    event = json.loads(sse.data)
                    last_id = sse.id
                    show(event)
                    if event["ns"] == "STATUS" and event["data"].get("state") in TERMINAL:
                        state = event["data"]["state"]
                        print(f"run {run_id} {state}")
                        return 0 if state == "succeeded" else 1
            print(f"~ the stream closed before the end; reconnecting after seq {last_id}")
        except httpx.TransportError as exc:
            failures += 1
            if failures > max_attempts:
                print(f"! giving up after {max_attempts} failed attempts: {exc!r}", file=sys.stderr)
                return 2
            print(f"~ connection lost ({type(exc).__name__}); reconnecting in {retry_s:g}s "
                  f"with Last-Event-ID {last_id}")
        time.sleep(retry_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the thoughtstream server")
    parser.add_argument("--run", help="watch this run instead of starting one")
    parser.add_argument("--question", default="What is 17 times 23, and what is a JSON Web Token?",
                        help="the question for a new run of the reflective agent")
    parser.add_argument("--retry-s", type=float, help="seconds between reconnects (default: the server's retry:)")
    args = parser.parse_args()
    # The server sends a keep-alive comment every 15 s, so 45 s of silence means a dead connection:
    # the read timeout turns it into a reconnect instead of a hang.
    with httpx.Client(base_url=args.url, timeout=httpx.Timeout(10.0, read=45.0)) as client:
        run_id = args.run or start_run(client, args.question)
        return watch(client, run_id, args.retry_s)


if __name__ == "__main__":
    sys.exit(main())
