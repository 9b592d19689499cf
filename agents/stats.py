"""Statistics for evaluations, learning curves and reports: the one place intervals are computed.

- :func:`mean_ci`: the mean of some values (episode returns, seeds' scores) and its 95% percentile
  bootstrap confidence interval (scipy's ``bootstrap``).
- :func:`success_ci`: the 95% Wilson score interval of a success rate (scipy's ``binomtest``). A
  bootstrap of 0/1 outcomes collapses to a point at 0/n and n/n; Wilson's interval does not.
- :func:`interval_estimates`: rliable's stratified-bootstrap intervals of aggregate metrics over runs.
- :data:`BAND`: the sentence a plot uses to say what its band is.

numpy only at import (``compare`` and ``report`` load no torch); scipy and rliable load when used.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["BAND", "LEVEL", "interval_estimates", "mean_ci", "one_seed_warning", "success_ci"]

LEVEL = 0.95
BAND = "band: 95% percentile-bootstrap CI of the mean over seeds"


def mean_ci(
    values: Sequence[float], level: float = LEVEL, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (seeded: the same values give the
    same interval). One value, or values all equal, give a zero-width interval at the mean."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    from scipy import stats

    result = stats.bootstrap(
        (values,), np.mean, confidence_level=level, n_resamples=resamples, method="percentile", random_state=seed
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def success_ci(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of ``successes`` out of ``trials`` (0/n and n/n keep a one-sided width)."""
    from scipy import stats

    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def interval_estimates(
    scores: dict[str, np.ndarray], func: Callable[[np.ndarray], np.ndarray], reps: int = 2000, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """rliable's point estimates and 95% stratified-bootstrap intervals of ``func`` over ``{label: runs x
    tasks}`` score matrices, seeded with ``seed``."""
    from rliable import library

    with warnings.catch_warnings():
        # arch deprecates the RandomState that rliable hands it; it still seeds the resampling.
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        return library.get_interval_estimates(scores, func, reps=reps, random_state=np.random.RandomState(seed))


def one_seed_warning(what: str, seeds: int) -> str | None:
    """The line to print when ``what`` rests on one seed (no interval across seeds), else ``None``."""
    if seeds == 1:
        return f"warning: {what} has one seed: no interval across seeds (train more seeds for a band)"
    return None
