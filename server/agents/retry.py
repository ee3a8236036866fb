"""Retries for graph nodes: LangGraph's own RetryPolicy, plus a STATUS event per retry.

Transient failures (timeouts, dropped connections, rate limits) are retried with
backoff; permanent ones (validation, permission, bugs) fail at once. LangGraph's
``retry_on`` runs outside the node's context and cannot write to the stream, so the
node itself reports a failure it knows will be retried.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Awaitable, Callable

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.types import RetryPolicy

_TRANSIENT_NAMES = {
    "APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError",
    "ServiceUnavailableError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError",
}


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the same call may well succeed in a moment."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and (status == 429 or status >= 500):
        return True
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__)


def retry_policy(max_attempts: int = 3, initial_interval: float = 0.5) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, initial_interval=initial_interval,
                       backoff_factor=2.0, max_interval=10.0, jitter=True, retry_on=is_transient)


def reporting_retries(name: str, fn: Callable[..., Awaitable[Any]], max_attempts: int = 3) -> Callable[..., Awaitable[Any]]:
    """Wrap an async node so each transient failure that will be retried emits
    ``STATUS {state: "retrying", node, attempt, reason}`` before LangGraph retries it."""
    attempts: OrderedDict[str, int] = OrderedDict()  # per task; bounded

    # No functools.wraps: LangGraph reads the signature (following __wrapped__) to decide
    # whether to pass ``config``, and this wrapper needs it.
    async def node(state: Any, config: RunnableConfig) -> Any:
        meta = (config or {}).get("metadata", {})
        key = f"{meta.get('thread_id', '')}|{meta.get('langgraph_checkpoint_ns', '')}"
        try:
            result = await fn(state)
        except Exception as exc:
            if is_transient(exc):
                n = attempts[key] = attempts.get(key, 0) + 1
                while len(attempts) > 1000:
                    attempts.popitem(last=False)
                if n < max_attempts:
                    get_stream_writer()({"ns": "STATUS", "state": "retrying", "node": name,
                                         "attempt": n + 1, "reason": f"{type(exc).__name__}: {exc}"})
            raise
        attempts.pop(key, None)
        return result

    node.__name__ = node.__qualname__ = getattr(fn, "__name__", name)
    return node
