"""The examples/ scripts work against a real server (the Python client even through a flaky network)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import sys
from collections import Counter

import httpx
import pytest

from tests.support import ROOT, ServerProcess

from .conftest import full_log, start_run, wait_finished

EXAMPLES = ROOT / "examples"


async def run_script(*argv: str, env: dict[str, str] | None = None, timeout: float = 40) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


class FlakyProxy:
    """A TCP proxy that cuts every connection after a random number of response bytes."""

    def __init__(self, upstream_port: int, low: int, high: int, seed: int) -> None:
        self.upstream_port = upstream_port
        self.low, self.high = low, high
        self.rng = random.Random(seed)
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FlakyProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        budget = self.rng.randint(self.low, self.high)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            nonlocal budget
            while data := await up_reader.read(65536):
                if len(data) >= budget:
                    writer.write(data[:budget])
                    await writer.drain()
                    self.cuts += 1
                    return
                budget -= len(data)
                writer.write(data)
                await writer.drain()

        pump = asyncio.create_task(upstream())
        try:
            await downstream()
        except (ConnectionError, OSError):
            pass
        finally:
            pump.cancel()
            writer.transport.abort()
            up_writer.transport.abort()


async def test_sse_client_example_resumes_through_dropped_connections(
        client: httpx.AsyncClient, main_server: ServerProcess) -> None:
    """examples/02_sse_client.py through a proxy that keeps cutting connections: every seq printed once, exit 0."""
    run = await start_run(client, "ticker", {"count": 60, "interval_s": 0.03})
    async with FlakyProxy(main_server.port, 1200, 3000, seed=7) as proxy:
        code, out = await run_script(sys.executable, str(EXAMPLES / "02_sse_client.py"),
                                     "--url", proxy.url, "--run", run["run_id"], "--retry-s", "0.05")
    assert code == 0, out
    assert proxy.cuts >= 2, out
    assert "connection lost" in out and "reconnecting" in out
    printed = [int(m.group(1)) for m in re.finditer(r"^\s*(\d+) [A-Z_]+ ", out, re.MULTILINE)]
    log = await full_log(client, run["run_id"])
    assert printed == [e["seq"] for e in log], out
    assert f"run {run['run_id']} succeeded" in out


async def test_sse_client_example_starts_a_run_and_exits_at_the_end(main_server: ServerProcess) -> None:
    """examples/02_sse_client.py with no run id starts a reflective run, prints it live and exits 0 when it succeeds."""
    code, out = await run_script(sys.executable, str(EXAMPLES / "02_sse_client.py"), "--url", main_server.url,
                                 "--question", "What is 9 times 9?")
    assert code == 0, out
    assert re.search(r"^started run \w+ \(202, status queued\)$", out, re.MULTILINE), out
    namespaces = Counter(m.group(1) for m in re.finditer(r"^\s*\d+ ([A-Z_]+) ", out, re.MULTILINE))
    assert namespaces["THOUGHT"] > 5 and namespaces["TOOL_USE"] >= 2 and namespaces["RESULT"] == 1
    assert out.rstrip().endswith("succeeded")


async def test_reconnect_demo_example_reports_an_exact_resume(main_server: ServerProcess) -> None:
    """examples/03_reconnect_demo.py drops and resumes several times and reports duplicates 0, missing 0."""
    code, out = await run_script(sys.executable, str(EXAMPLES / "03_reconnect_demo.py"), "--url", main_server.url,
                                 "--drop-every", "15", "--pause", "0.02")
    assert code == 0, out
    assert out.count("dropped the connection") >= 3, out
    assert "duplicates 0, missing 0, out of order 0" in out
    assert re.search(r"identical to the full log \(\d+ events\): yes", out), out


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("bash")), reason="needs curl and bash")
async def test_curl_example_starts_and_watches_a_run(client: httpx.AsyncClient, main_server: ServerProcess) -> None:
    """examples/01_curl.sh posts a run and `curl -N` prints its SSE stream until the terminal STATUS."""
    code, out = await run_script("bash", str(EXAMPLES / "01_curl.sh"), "What is 5 plus 5?",
                                 env={"BASE": main_server.url})
    assert code == 0, out
    run_id = re.search(r'"run_id":"(\w+)"', out).group(1)
    assert "retry: 2000" in out and "event: THOUGHT" in out
    last_data = [line for line in out.splitlines() if line.startswith("data: ")][-1]
    assert '"state":"succeeded"' in last_data
    snap = await wait_finished(client, run_id)
    assert f"id: {snap['last_seq']}" in out


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_secure_curl_example() -> None:
    """examples/05_secure_curl.sh (the README's "Secure it"): a JWT starts and watches a run, a ticket re-opens it."""
    secret = "example-secret-" + os.urandom(16).hex()
    env = {"THOUGHTSTREAM_AUTH": "jwt", "THOUGHTSTREAM_JWT_SECRET": secret, "THOUGHTSTREAM_JOURNAL": "false"}
    with ServerProcess(env=env) as server:
        code, out = await run_script("bash", str(EXAMPLES / "05_secure_curl.sh"),
                                     env={"BASE": server.url, "THOUGHTSTREAM_JWT_SECRET": secret,
                                          "PYTHON": sys.executable})
    assert code == 0, out
    assert '"code":"unauthenticated"' in out
    assert '"tenant":"acme","sub":"alice"' in out
    ends = [line for line in out.splitlines() if line.startswith("data: ") and '"ns":"STATUS"' in line]
    assert len(ends) == 2 and all('"state":"succeeded"' in line for line in ends), out
    assert secret not in out


@pytest.mark.parametrize("cut", [2, 5, 9])
async def test_langgraph_sdk_example_rejoins_exactly(main_server: ServerProcess, cut: int) -> None:
    """The official langgraph-sdk, cut after `cut` events and rejoined with last_event_id, gets
    exactly the replay of the whole run."""
    code, out = await run_script(sys.executable, str(EXAMPLES / "06_langgraph_sdk.py"), "--url", main_server.url,
                                 "--cut", str(cut))
    assert code == 0, out
    assert "exact, nothing missing or repeated" in out, out
    assert "thread: idle" in out, out


async def test_polling_client_example(client: httpx.AsyncClient, main_server: ServerProcess) -> None:
    """examples/07_polling_client.py: 304s while a run naps (long-polls of 1 s, Retry-After as backoff),
    then the result, and every event of the log paged as JSON."""
    code, out = await run_script(sys.executable, str(EXAMPLES / "07_polling_client.py"), "--url", main_server.url,
                                 "--agent", "napper", "--input", '{"nap_s": 3}', "--wait", "1")
    assert code == 0, out
    assert re.search(r"^304 not modified \(held 1\.\d+s\); Retry-After \d+s$", out, re.M), out
    run_id = re.search(r"started run (\w+)", out).group(1)
    summary = re.search(rf"run {run_id} succeeded: (\d+) polls, (\d+) of them 304, (\d+) events paged", out)
    assert summary, out
    snap = await wait_finished(client, run_id)
    assert int(summary.group(3)) == snap["last_seq"] == len(await full_log(client, run_id))
    assert '"woke": true' in out
