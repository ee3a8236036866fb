# Run:  python examples/07_polling_client.py                 (with `thoughtstream serve` on 127.0.0.1:8000)
#       python examples/07_polling_client.py --url http://127.0.0.1:8000 --question "What is 2 to the power of 10?"
#       python examples/07_polling_client.py --run <run_id>   (poll a run that already exists)
#       curl -i "http://127.0.0.1:8000/runs/<run_id>?wait=20" -H 'If-None-Match: "<etag from the last answer>"'
"""A polling client for thoughtstream (httpx only), for where a stream cannot live.

Some networks buffer or cut event streams (strict proxies), and some clients sleep between
requests (mobile). This client never holds a stream open. It asks

    GET /runs/{id}?wait=W   with If-None-Match: <the ETag of the snapshot it has>

and the server holds the request until the run changes (200, a new snapshot and ETag) or W
seconds pass (304, no body). Each change is printed, and the events since the last one are
fetched as JSON pages (GET /runs/{id}/events?format=json&after=<next_after>), the same
events an SSE client gets. The pause between polls is the server's ``Retry-After``, which
grows while the run stays unchanged (a long-poll counts as part of it). Exit code: 0 if the
run succeeded, 1 if it failed or was cancelled, 2 on a client error (unknown run, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


def start_run(client: httpx.Client, agent: str, input: dict) -> str:
    resp = client.post("/runs", json={"agent": agent, "input": input})
    resp.raise_for_status()
    body = resp.json()
    print(f"started run {body['run_id']} ({resp.status_code}, status {body['status']})")
    return body["run_id"]


def show(event: dict) -> None:
    data = event["data"]
    text = data["text"] if set(data) == {"text"} else json.dumps(data, separators=(",", ":"))
    if len(text) > 100:
        text = text[:97] + "..."
    print(f"  {event['seq']:5d} {event['ns']:<12} {event['agent']:<12} {text}", flush=True)


class Pager:
    """The run's events as JSON pages, from where the last page ended."""

    def __init__(self, client: httpx.Client, run_id: str, limit: int = 100) -> None:
        self.client, self.run_id, self.limit = client, run_id, limit
        self.after: int | None = None
        self.count = 0
        self.ended = False

    def catch_up(self) -> None:
        """Every event the log holds past the cursor (page after page, no waiting)."""
        while not self.ended:
            params: dict = {"format": "json", "limit": self.limit}
            if self.after is not None:
                params["after"] = self.after
            resp = self.client.get(f"/runs/{self.run_id}/events", params=params)
            if resp.status_code == 410 and self.after is not None:
                print(f"! {resp.json()['error']['message']} -- continuing from the oldest kept event")
                self.after = None
                continue
            resp.raise_for_status()
            page = resp.json()
            for event in page["events"]:
                show(event)
            self.count += len(page["events"])
            self.after, self.ended = page["next_after"], page["ended"]
            if page["next_after"] >= page["last_seq"]:
                return


def poll(client: httpx.Client, run_id: str, wait_s: float) -> int:
    """Follow ``run_id`` to its end by polling; returns the exit code."""
    etag: str | None = None
    pager = Pager(client, run_id)
    polls = not_modified = 0
    while True:
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": wait_s} if wait_s > 0 and etag else {}
        sent = time.monotonic()
        try:
            resp = client.get(f"/runs/{run_id}", params=params, headers=headers)
        except httpx.TransportError as exc:
            print(f"~ {type(exc).__name__}; polling again in 2s")
            time.sleep(2)
            continue
        held = time.monotonic() - sent
        polls += 1
        retry = float(resp.headers.get("retry-after", "1"))
        if resp.status_code == 304:
            not_modified += 1
            print(f"304 not modified (held {held:.1f}s); Retry-After {retry:g}s")
        elif resp.status_code == 200:
            snap = resp.json()
            etag = resp.headers.get("etag")
            where = f", queue position {snap['queue_position']}" if snap.get("queue_position") else ""
            print(f"200 {snap['status']}, last_seq {snap['last_seq']}{where} (ETag {etag})")
            pager.catch_up()
            if snap["status"] in TERMINAL:
                pager.catch_up()  # the ending's events, if the snapshot came first
                print(f"run {run_id} {snap['status']}: {polls} polls, {not_modified} of them 304, "
                      f"{pager.count} events paged")
                if snap.get("result") is not None:
                    print("result:", json.dumps(snap["result"])[:300])
                return 0 if snap["status"] == "succeeded" else 1
        else:
            print(f"! {resp.status_code}: {resp.text}", file=sys.stderr)
            return 2
        # The server's backoff, less what the long-poll already waited (a change is what ends
        # a long-poll early, and then the next poll goes at once).
        if resp.status_code == 304 or not params:
            time.sleep(max(0.0, retry - held))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the thoughtstream server")
    parser.add_argument("--run", help="poll this run instead of starting one")
    parser.add_argument("--question", default="What is 17 times 23, and what is a JSON Web Token?",
                        help="the question for a new run of the reflective agent")
    parser.add_argument("--agent", default="reflective", help="the agent of a new run")
    parser.add_argument("--input", help="the input of a new run, as JSON (default: {\"question\": QUESTION})")
    parser.add_argument("--wait", type=float, default=20.0,
                        help="seconds each long-poll may be held (0: plain polling, at Retry-After)")
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=httpx.Timeout(10.0, read=args.wait + 15.0)) as client:
        input = json.loads(args.input) if args.input else {"question": args.question}
        run_id = args.run or start_run(client, args.agent, input)
        return poll(client, run_id, args.wait)


if __name__ == "__main__":
    sys.exit(main())
