"""LangGraph's checkpointer conformance suite (``langgraph-checkpoint-conformance``), run the
same way on each of our savers (tests/integration/test_{redis,sqlite}_checkpointer.py)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks

BASE_CAPABILITIES = ("put", "put_writes", "get_tuple", "list", "delete_thread")


async def assert_conformant(name: str, saver: Callable[[], AsyncIterator[Any]]) -> None:
    """``saver``: an async generator yielding a fresh saver per capability suite (so that
    ``list()`` without a thread sees only its own). Nothing fails, and every base capability
    was detected and run (none skipped as not implemented)."""
    report = await validate(checkpointer_test(name=name)(saver), progress=ProgressCallbacks.verbose())
    failures = {cap: r.failures for cap, r in report.results.items() if r.passed is False}
    assert not failures, failures
    for cap in BASE_CAPABILITIES:
        assert report.results[cap].passed is True, (cap, report.results[cap])
