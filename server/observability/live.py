"""The live figures of the operator's view (``GET /admin/overview``): events per second and
the delivery lag's p99 over the last interval, from this process's own counters.

A dashboard reading ``/metrics`` computes these with ``rate()`` and ``histogram_quantile``;
the viewer's Operations tab has no Prometheus, so the same arithmetic happens here between
two samples (the previous call's and this one's).
"""

from __future__ import annotations

import math
import time
from typing import Any

from .metrics import Metrics


def _total(metric: Any, suffix: str = "_total") -> float:
    return sum(s.value for fam in metric.collect() for s in fam.samples if s.name.endswith(suffix))


def _buckets(metric: Any) -> dict[float, float]:
    """Cumulative counts per upper bound, summed over every label set."""
    out: dict[float, float] = {}
    for fam in metric.collect():
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                out[le] = out.get(le, 0.0) + s.value
    return out


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket that holds the q-th sample."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = cumulative[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # past the last finite bound: its bound is all that is known
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, count
    return lower


class LiveRates:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._last: tuple[float, float, dict[float, float]] | None = None

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        delivered = _total(self.metrics.events_delivered)
        lag = _buckets(self.metrics.delivery_lag)
        out: dict[str, Any] = {"events_per_s": None, "delivery_lag_p99_s": None,
                               "rates_scope": "events delivered by this API process to its clients"}
        if self._last is not None:
            t0, delivered0, lag0 = self._last
            if now > t0:
                out["events_per_s"] = round(max(0.0, delivered - delivered0) / (now - t0), 1)
            window = {le: count - lag0.get(le, 0.0) for le, count in lag.items()}
            p99 = quantile(0.99, window)
            out["delivery_lag_p99_s"] = round(p99, 4) if p99 is not None else None
        self._last = (now, delivered, lag)
        return out
