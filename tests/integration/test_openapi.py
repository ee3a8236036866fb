"""/openapi.json describes every HTTP route, and schemathesis finds nothing it can break."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from server.transports import polling
from tests.support import ServerProcess

from .conftest import agent_flags, start_server

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[ServerProcess]:
    """A server of its own: thousands of generated requests must not disturb other tests."""
    server = start_server(*agent_flags({"echo": "tests/fixtures/echo_graph.py:graph"}), env={
        "THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S": "2000",
        "THOUGHTSTREAM_MAX_QUEUED_RUNS": "100000",
    })
    try:
        yield server
    finally:
        server.stop()


def test_document_is_openapi_31_with_every_route(fuzzed_server: ServerProcess) -> None:
    """Every route the app serves (but Socket.IO and the viewer) is described, with schemas."""
    from server.app import create_app

    doc = httpx.get(fuzzed_server.url + "/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    served = {(m.lower(), r.path) for r in create_app().routes
              if getattr(r, "methods", None) for m in r.methods if m != "HEAD"}
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == described
    submit = doc["paths"]["/runs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SubmitRequest")
    assert set(submit["responses"]) >= {"202", "400", "404", "413", "415", "422", "503"}
    schemas = doc["components"]["schemas"]
    by_agent = {v["properties"]["agent"]["const"]: v for v in schemas["SubmitRequest"]["oneOf"]}
    assert set(by_agent) == {"echo", "reflective"}
    assert by_agent["echo"]["properties"]["input"]["required"] == ["text"]
    assert all(v["additionalProperties"] is False for v in by_agent.values())
    events = doc["paths"]["/runs/{run_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {p["name"] for p in events["parameters"]} >= {"Last-Event-ID", "last_event_id", "after", "ns"}


def test_schemathesis_finds_no_failure(fuzzed_server: ServerProcess, tmp_path: Path) -> None:
    """Property-based requests against every operation: no 5xx, only documented statuses,
    content types and bodies that match the schema."""
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert cli, "schemathesis is a test dependency (pip install -e '.[test]')"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    # One worker thread: hypothesis describes strategies with ast.parse, which CPython 3.11
    # breaks when two threads parse at once ("SystemError: AST constructor recursion depth
    # mismatch" — a crash of the fuzzer, not a finding; it failed CI once).
    # A long-poll (``?wait=`` up to MAX_WAIT_S with a matching If-None-Match) is answered
    # when the wait is over: the client's timeout must outlast it (schemathesis' default,
    # 10 s, read a documented 15 s wait as a network error once in CI).
    request_timeout = polling.MAX_WAIT_S + 30
    proc = subprocess.run(
        [cli, "run", fuzzed_server.url + "/openapi.json", "--checks", CHECKS,
         "--max-time", os.environ.get("TS_FUZZ_SECONDS", "40"), "--workers", "1",
         "--request-timeout", f"{request_timeout:g}",
         "--generation-deterministic", "--suppress-health-check", "all"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "passed" in out and " failure" not in out.split("SUMMARY")[-1], out[-3000:]
    # The fuzzing reached the API's logic, not only its validation: runs were started.
    assert httpx.get(fuzzed_server.url + "/runs", params={"limit": 1}).json()["runs"]
