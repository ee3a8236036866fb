"""The event bus: one interface (``base``), one subscription algorithm (``subscription``),
one module per backend."""

from .base import (  # noqa: F401
    Bus,
    BusError,
    CursorAhead,
    CursorExpired,
    LogBounds,
    UnknownLog,
)
from .subscription import Subscription, subscribe  # noqa: F401
