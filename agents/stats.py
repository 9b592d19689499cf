"""Statistics for evaluations, learning curves and reports: one module, numpy only at import.

- :func:`mean_ci`: the mean of some values (episode returns, seeds' scores) and its 95% percentile
  bootstrap confidence interval.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mean_ci"]


def mean_ci(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (seeded: the same values give
    the same interval). One value gives a zero-width interval."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
