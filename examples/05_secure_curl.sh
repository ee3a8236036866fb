#!/usr/bin/env bash
# Run:  export THOUGHTSTREAM_AUTH=jwt THOUGHTSTREAM_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
#       thoughtstream serve &          # the server and this script share the secret
#       bash examples/05_secure_curl.sh
#
# Mints a one-hour HS256 JWT for tenant "acme" with PyJWT (a dependency of thoughtstream; in
# production your identity provider signs tokens), starts a run with it, then watches the run
# twice: with the token in a header (curl can send headers) and with a ticket, the way a
# browser's EventSource does (it cannot send headers, and a token must never sit in a URL).
set -euo pipefail

BASE="${BASE:-http://127.0.0.1:8000}"
PYTHON="${PYTHON:-python3}"
: "${THOUGHTSTREAM_JWT_SECRET:?set THOUGHTSTREAM_JWT_SECRET to the secret the server uses}"

TOKEN=$("$PYTHON" -c '
import os, time, jwt
claims = {"sub": "alice", "tenant": "acme", "roles": ["member"], "exp": int(time.time()) + 3600}
print(jwt.encode(claims, os.environ["THOUGHTSTREAM_JWT_SECRET"], algorithm="HS256"))')

echo "# without a credential: 401"
curl -sS "$BASE/runs"; echo

echo "# GET $BASE/whoami"
curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$BASE/whoami"; echo

echo "# POST $BASE/runs"
RESPONSE=$(curl -sS --fail-with-body -X POST "$BASE/runs" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d '{"agent": "reflective", "input": {"question": "What is 17*23?"}}')
echo "$RESPONSE"
EVENTS_URL=$(printf '%s' "$RESPONSE" | sed -n 's/.*"events_url":"\([^"]*\)".*/\1/p')
RUN_URL=${EVENTS_URL%/events}

echo "# GET $BASE$EVENTS_URL  (the token in a header)"
curl -sS -N --fail-with-body -H "Authorization: Bearer $TOKEN" "$BASE$EVENTS_URL" | tail -n 4

echo "# POST $BASE$RUN_URL/ticket, then GET $BASE$EVENTS_URL?ticket=…  (as EventSource would)"
TICKET=$(curl -sS --fail-with-body -X POST -H "Authorization: Bearer $TOKEN" "$BASE$RUN_URL/ticket" \
  | sed -n 's/.*"ticket":"\([^"]*\)".*/\1/p')
curl -sS -N --fail-with-body "$BASE$EVENTS_URL?ticket=$TICKET" | tail -n 4
