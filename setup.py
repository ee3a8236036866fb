"""Ship the viewer inside the package: ``static/`` (the source folder) is copied into
``server/static/`` when a wheel is built, so ``pip install .`` serves ``/`` too.

Only the viewer's own files and the one Socket.IO browser bundle it loads are copied
(not all of ``node_modules``). Without ``npm ci --prefix static`` first, the wheel has no
bundle and the viewer runs over SSE, saying so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
VIEWER = ("index.html", "app.js", "app.css", "client.js")
SOCKETIO_BUNDLE = Path("node_modules/socket.io-client/dist/socket.io.esm.min.js")


class BuildWithViewer(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install serves static/ from the checkout
            return
        src = ROOT / "static"
        dest = Path(self.build_lib) / "server" / "static"
        dest.mkdir(parents=True, exist_ok=True)
        for name in VIEWER:
            shutil.copyfile(src / name, dest / name)
        bundle = src / SOCKETIO_BUNDLE
        if bundle.is_file():
            (dest / SOCKETIO_BUNDLE).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle, dest / SOCKETIO_BUNDLE)


setup(cmdclass={"build_py": BuildWithViewer})
