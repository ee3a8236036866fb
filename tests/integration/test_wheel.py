"""An installed wheel (not an editable checkout) serves the viewer and runs agents."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port

VIEWER_FILES = ("/", "/index.html", "/app.js", "/client.js", "/app.css")
SOCKETIO_BUNDLE = "/node_modules/socket.io-client/dist/socket.io.esm.min.js"


def _run(*argv: str | Path, cwd: Path) -> None:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from this checkout and install it into a fresh virtual environment."""
    tmp = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", ROOT, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("thoughtstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "server/static/index.html" in names, names
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp)
    return venv


@pytest.fixture(scope="module")
def wheel_server(installed: Path, tmp_path_factory: pytest.TempPathFactory):
    # Started outside the checkout, so nothing can be imported or served from it.
    cwd = tmp_path_factory.mktemp("elsewhere")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(THOUGHTSTREAM_DATA_DIR=str(cwd / "data"), THOUGHTSTREAM_LOG_LEVEL="warning",
               THOUGHTSTREAM_SCRIPTED_TOKENS_PER_S="400")
    log = open(cwd / "server.log", "wb")
    proc = subprocess.Popen([str(installed / "bin" / "thoughtstream"), "serve", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (cwd / "server.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the installed server did not become healthy"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_the_installed_package_is_not_the_checkout(installed: Path) -> None:
    """The server the wheel installed lives in the venv's site-packages, viewer included."""
    out = subprocess.run([str(installed / "bin" / "python"), "-c",
                          "import server, pathlib; print(pathlib.Path(server.__file__).parent)"],
                         cwd=installed, capture_output=True, text=True, check=True).stdout.strip()
    pkg = Path(out)
    assert installed in pkg.parents and ROOT not in pkg.parents
    assert (pkg / "static" / "index.html").is_file()


def test_wheel_serves_the_viewer(wheel_server: str) -> None:
    """`/` and every script it loads answer 200 from the installed package."""
    for path in VIEWER_FILES:
        res = httpx.get(wheel_server + path, timeout=5)
        assert res.status_code == 200, (path, res.status_code)
    page = httpx.get(wheel_server + "/", timeout=5).text
    assert "app.js" in page
    bundle = httpx.get(wheel_server + SOCKETIO_BUNDLE, timeout=5)
    if (ROOT / "static" / SOCKETIO_BUNDLE.lstrip("/")).is_file():
        # Built after `npm ci --prefix static`: the Socket.IO transport ships too.
        assert bundle.status_code == 200 and "io" in bundle.text
    else:
        assert bundle.status_code == 404  # the viewer falls back to SSE and says so


def test_wheel_runs_an_agent(wheel_server: str) -> None:
    """The installed server starts the built-in agent and streams it to the end."""
    res = httpx.post(wheel_server + "/runs", json={"agent": "reflective",
                                                   "input": {"question": "What is 2**10?"}})
    assert res.status_code == 202, res.text
    run_id = res.json()["run_id"]
    with httpx.stream("GET", f"{wheel_server}/runs/{run_id}/events", timeout=30) as stream:
        body = "".join(stream.iter_text())
    assert "event: STATUS" in body and '"succeeded"' in body
