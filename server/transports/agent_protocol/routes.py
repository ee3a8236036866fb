"""LangGraph's Agent Server HTTP protocol: assistants, threads, runs and their streams.

A thin adapter, like the other transports: runs go through ``RunService`` (queue, fair
share, lifecycle), threads through ``ThreadService``, and every stream is
``bus.subscribe(run, after)`` framed by ``stream.Framer``. Paths and shapes are the ones
the official SDKs (``langgraph-sdk``, ``@langchain/langgraph-sdk``) and ``RemoteGraph`` read.

The routes live in ``threads.py`` (assistants and threads) and ``runs.py``, with what both
share in ``common.py``; this module only gathers their ``operations`` for the app.
"""

from __future__ import annotations

from . import runs, threads

# The assistants' and threads' routes, then the runs': the order /openapi.json lists them in.
operations = [*threads.operations, *runs.operations]
