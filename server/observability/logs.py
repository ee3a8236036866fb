"""Log lines that say which run caused them, and the JSON format (``--log-format json``).

``run_context`` is entered where a run executes (``Executor.run``). It sets a context
variable, which asyncio copies into every task the run starts and LangChain into the
threads it runs sync code in, so a line logged by a library deep inside the graph
carries the run's ``run_id``, ``tenant`` and ``agent`` too. The ``ContextVar`` is
module-level because that is how context variables work: its value is per context, not
shared state. Configuring handlers stays the CLI's job; this module only provides the
formatter and the filter it installs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from contextvars import ContextVar
from typing import Any, Iterator

import orjson

RUN_FIELDS = ("run_id", "tenant", "agent")
_run: ContextVar[tuple[str, str, str] | None] = ContextVar("thoughtstream_run", default=None)


@contextlib.contextmanager
def run_context(run_id: str, tenant: str, agent: str) -> Iterator[None]:
    token = _run.set((run_id, tenant, agent))
    try:
        yield
    finally:
        _run.reset(token)


def current_run() -> dict[str, str] | None:
    value = _run.get()
    return None if value is None else dict(zip(RUN_FIELDS, value))


class RunContextFilter(logging.Filter):
    """Puts the current run's fields on the record (unless the call passed its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        value = _run.get()
        if value is not None:
            for name, field in zip(RUN_FIELDS, value):
                if not hasattr(record, name):
                    setattr(record, name, field)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, the run's
    fields when a run caused the line, and the traceback as ``exc`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in RUN_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()
