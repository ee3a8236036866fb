#!/usr/bin/env bash
# Run:  bash examples/01_curl.sh        (with `thoughtstream serve` running on 127.0.0.1:8000;
#       BASE=http://host:port bash examples/01_curl.sh for another address)
#
# Starts a run of the built-in `reflective` agent with curl, then watches its events with
# `curl -N` (no buffering) until the server closes the stream after the terminal STATUS event.
# To resume after a drop, send the last `id:` you saw:  curl -N -H 'Last-Event-ID: 42' "$BASE$EVENTS_URL"
set -euo pipefail

BASE="${BASE:-http://127.0.0.1:8000}"
QUESTION="${1:-What is 17 times 23, and what does the corpus say about server-sent events?}"
QUESTION_JSON=$(printf '%s' "$QUESTION" | sed 's/\\/\\\\/g; s/"/\\"/g')

echo "# POST $BASE/runs"
RESPONSE=$(curl -sS --fail-with-body -X POST "$BASE/runs" \
  -H 'Content-Type: application/json' \
  -d "{\"agent\": \"reflective\", \"input\": {\"question\": \"$QUESTION_JSON\"}}")
echo "$RESPONSE"

# The 202 body is {"run_id", "status": "queued", "events_url", "room", ...}; no jq needed.
EVENTS_URL=$(printf '%s' "$RESPONSE" | sed -n 's/.*"events_url":"\([^"]*\)".*/\1/p')
if [ -z "$EVENTS_URL" ]; then
  echo "no events_url in the response" >&2
  exit 1
fi

echo "# GET $BASE$EVENTS_URL  (Server-Sent Events; ends by itself after the terminal STATUS)"
curl -sS -N --fail-with-body "$BASE$EVENTS_URL"
