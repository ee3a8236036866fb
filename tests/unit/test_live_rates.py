"""The Operations tab's live figures: Prometheus's quantile arithmetic between two samples."""

from __future__ import annotations

import math

from server.observability.live import quantile


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    """99 samples under 10 ms and one under 100 ms: p99 lies in the first bucket, p100 in the second."""
    cumulative = {0.01: 99.0, 0.1: 100.0, math.inf: 100.0}
    assert math.isclose(quantile(0.99, cumulative), 0.01 * (99 / 99))
    assert math.isclose(quantile(0.5, cumulative), 0.01 * (50 / 99))
    assert math.isclose(quantile(1.0, cumulative), 0.1)


def test_quantile_of_nothing_is_unknown_and_past_the_last_bound_is_that_bound() -> None:
    """No samples → None; samples only in +Inf → the largest finite bound."""
    assert quantile(0.99, {}) is None
    assert quantile(0.99, {0.01: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {0.01: 0.0, 30.0: 0.0, math.inf: 5.0}) == 30.0
