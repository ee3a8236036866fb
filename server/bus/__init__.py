"""The event bus: one interface (``base``), one module per backend."""

from .base import (  # noqa: F401
    Bus,
    BusError,
    CursorAhead,
    CursorExpired,
    LogBounds,
    Subscription,
    UnknownLog,
    subscribe,
)
