"""The scenarios of ``python -m bench``: one module each, each a ``run(ctx) -> Result``.

A module also says which targets it applies to (``APPLIES``: target -> None, or the
reason it cannot apply) and its defaults (``DEFAULTS``: flag -> value), which the
command line overrides.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..procs import Target, start_target
from . import api_latency, catchup, cores, fanout, idle, redis, runs, sdk_chaos, soak, watchers

SCENARIOS: dict[str, ModuleType] = {
    "fanout": fanout, "runs": runs, "idle": idle, "api-latency": api_latency,
    "catchup": catchup, "redis": redis, "soak": soak, "sdk-chaos": sdk_chaos, "cores": cores, "watchers": watchers,
}


@dataclass
class Context:
    """One invocation: the options, the targets (primary first), a scratch directory."""

    scenario: str
    targets: list[str]
    opts: dict[str, Any]
    install_langgraph: bool = False
    stack: ExitStack = field(default_factory=ExitStack)
    started: dict[str, Target] = field(default_factory=dict)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))

    @property
    def primary(self) -> str:
        return self.targets[0]

    def target(self, name: str) -> Target:
        """The target ``name``, started on first use and stopped when the invocation ends."""
        if name not in self.started:
            t = start_target(name, install_langgraph=self.install_langgraph)
            self.stack.callback(t.stop)
            self.started[name] = t
        return self.started[name]

    def fresh(self, name: str) -> Target:
        """A new target process that the caller stops (memory measurements want a fresh one)."""
        return start_target(name, install_langgraph=self.install_langgraph)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["opts"][key]
        except KeyError:
            raise AttributeError(key) from None
