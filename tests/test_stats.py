"""The statistics module: bootstrap and Wilson intervals, and what compare says about its bands."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rims_rl.agents.compare import compare_runs
from rims_rl.agents.stats import mean_ci, success_ci
from tests.helpers import cli_here
from tests.test_report import make_run

Z = 1.959963984540054  # the 97.5% normal quantile


@pytest.mark.parametrize("trials", [20, 200])
def test_wilson_interval_keeps_a_width_at_none_and_all(trials):
    """At 0/n and n/n a bootstrap collapses to a point; Wilson's interval reaches z^2 / (n + z^2) inward."""
    edge = Z**2 / (trials + Z**2)
    low, high = success_ci(0, trials)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(edge, rel=1e-6)
    low, high = success_ci(trials, trials)
    assert low == pytest.approx(1 - edge, rel=1e-6) and high == pytest.approx(1.0, abs=1e-12)


def test_wilson_interval_in_the_middle_matches_the_formula():
    k, n = 37, 90
    p, z2 = k / n, Z**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    assert success_ci(k, n) == pytest.approx((centre - half, centre + half), rel=1e-6)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_values():
    rng = np.random.default_rng(0)
    few, many = rng.normal(5, 1, 8), rng.normal(5, 1, 800)
    for values in (few, many):
        low, high = mean_ci(values)
        assert low < values.mean() < high
    assert np.subtract(*mean_ci(many)[::-1]) < np.subtract(*mean_ci(few)[::-1]) / 5
    assert mean_ci([3.0]) == (3.0, 3.0) and mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert mean_ci(few) == mean_ci(few)  # seeded


def test_compare_warns_about_one_seed(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "CartPole-v1", "rims", seed, train=[1.0, 2.0, 3.0])
    make_run(tmp_path, "CartPole-v1", "lstm", 0, train=[1.0, 1.0, 2.0])
    result = compare_runs([tmp_path], tmp_path / "cmp")
    assert result["warnings"] == [
        "warning: ppo-lstm on CartPole-v1 has one seed: no interval across seeds (train more seeds for a band)"
    ]
    shown = cli_here("compare", str(tmp_path), "--out", str(tmp_path / "cmp2"))
    assert shown.returncode == 0 and shown.stderr.count("has one seed") == 1
