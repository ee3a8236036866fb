"""The one retry pacing every loop uses: capped exponential backoff with jitter.

A loop that heals itself (a pub/sub listener, a queue reader, a feed) keeps one
``Backoff`` and calls ``await backoff.wait()`` after a failure and ``backoff.reset()``
after a success, so every reconnect in the server backs off the same way.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays of ``first``, 2×, 4×, … capped at ``cap``, each stretched by up to ``jitter``."""

    __slots__ = ("first", "cap", "jitter", "_delay")

    def __init__(self, first: float = 0.1, cap: float = 5.0, jitter: float = 0.25) -> None:
        if first <= 0 or cap < first:
            raise ValueError("backoff needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._delay = first

    @property
    def next_delay(self) -> float:
        """The delay the next ``wait()`` sleeps, before jitter."""
        return self._delay

    def reset(self) -> None:
        self._delay = self.first

    def step(self) -> float:
        """Return the delay to sleep now (with jitter) and double the next one."""
        delay = self._delay * (1 + random.random() * self.jitter)
        self._delay = min(self._delay * 2, self.cap)
        return delay

    async def wait(self) -> float:
        delay = self.step()
        await asyncio.sleep(delay)
        return delay
