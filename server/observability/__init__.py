"""Metrics (Prometheus) and logs: what an operator sees of the server."""

from .exposition import MetricsView, bus_overview
from .metrics import Metrics

__all__ = ["Metrics", "MetricsView", "bus_overview"]
