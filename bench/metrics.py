"""Per-result figures from raw samples, computed the way llama-bench computes them."""

from __future__ import annotations

import statistics


def tokens_per_s(samples_ns: list[int], n_tokens: int) -> list[float]:
    return [n_tokens * 1e9 / ns for ns in samples_ns if ns > 0]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """llama-bench's avg_ts/stddev_ts: mean of per-sample t/s and their sample standard deviation."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
