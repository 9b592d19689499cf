"""Learning curves of RIMs against LSTM runs: mean and 95% CI across seeds, as a PNG and a CSV.

What a curve is depends on ``source``: ``train`` reads SB3's ``rollout/ep_rew_mean``, the mean return of
the last 100 training episodes at each logging step (a rolling mean, so it lags); ``eval`` reads the
periodic evaluations (the mean return of ``run.eval_episodes`` episodes). Seeds are interpolated onto a
common grid of steps; the line is their mean and the band its 95% bootstrap CI over seeds. A label with
one seed has no band, and ``compare`` says so.
"""

from __future__ import annotations

import csv
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.agents.config import ConfigError
from rims_rl.agents.runs import check_writable, find_runs, learning_curve, read_config, run_label
from rims_rl.agents.stats import BAND, mean_ci, one_seed_warning
from rims_rl.envs import env_name

__all__ = ["CURVES", "compare_runs", "mean_curve", "plot_curves"]

POINTS = 50  # grid points per curve
# What one seed's curve is, per source.
CURVES = {
    "train": "curve: SB3's rolling mean of the last 100 training episodes' returns",
    "eval": "curve: mean evaluation return at each evaluation",
}


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grid, mean, bounds)`` of several seeds' ``(steps, returns)``: the mean return and its 95% bootstrap CI
    (``bounds[:, 0]`` low, ``bounds[:, 1]`` high) on ``POINTS`` steps."""
    # Seeds are compared on the steps that all of them reached.
    end = min(steps[-1] for steps, _ in curves)
    start = max(steps[0] for steps, _ in curves)
    grid = np.linspace(start, end, POINTS) if end > start else np.array([end])
    table = np.stack([np.interp(grid, steps, returns) for steps, returns in curves])
    bounds = np.array([mean_ci(column) for column in table.T])
    return grid, table.mean(axis=0), bounds


def plot_curves(groups: dict[str, dict[str, list]], path: Path, source: str, columns: int = 4) -> list[list]:
    """Plot ``groups[env][label] = [(steps, returns), ...]`` to ``path``, one panel per environment (``columns``
    panels a row) with the mean and 95% CI across seeds of each label; return the plotted points as CSV rows
    ``[env, label, seeds, step, mean, low, high]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, len(groups))
    rows_of_panels = -(-len(groups) // columns)
    figure, axes = plt.subplots(rows_of_panels, columns, figsize=(6 * columns, 4 * rows_of_panels), squeeze=False)
    rows = []
    for index, (env, labels) in enumerate(sorted(groups.items())):
        axis = axes.flat[index]
        for label, curves in sorted(labels.items()):
            grid, mean, bounds = mean_curve(curves)
            axis.plot(grid, mean, label=f"{label} ({len(curves)} seed{'s' if len(curves) != 1 else ''})")
            axis.fill_between(grid, bounds[:, 0], bounds[:, 1], alpha=0.25)
            for step, m, (low, high) in zip(grid, mean, bounds, strict=True):
                rows.append([env, label, len(curves), int(step), m, low, high])
        axis.set_title(env)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("episode return" + (" (evaluation)" if source == "eval" else " (training)"))
        axis.legend()
    for axis in axes.flat[len(groups) :]:
        axis.set_visible(False)
    # What the line and the band are, under the panels, wrapped to the figure's width.
    caption = textwrap.fill(f"Line: mean over seeds; {BAND}; {CURVES[source]}.", width=100 * columns)
    figure.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=8)
    figure.tight_layout(rect=(0, 0.04 + 0.03 * caption.count("\n"), 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return rows


def compare_runs(paths: list[str | Path], out: str | Path, source: str = "train") -> dict[str, Any]:
    """Group runs by environment and label (:func:`rims_rl.agents.runs.run_label`); write ``curves.png`` and
    ``curves.csv``."""
    if source not in ("train", "eval"):
        raise ConfigError(f"--source must be train or eval, got {source!r}")
    out = Path(out)
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run_dir in find_runs(paths):
        config = read_config(run_dir)
        steps, returns = learning_curve(run_dir, source)
        if len(steps):
            label = run_label(config["algo"], config["policy"], config["run"].get("label"))
            groups[env_name(config["env"]["id"])][label].append((steps, returns))
    if not groups:
        raise ConfigError(f"the runs have no {source} learning curves yet")
    check_writable(out)  # after the runs are read: a refusal leaves no output folder behind

    rows = plot_curves(groups, out / "curves.png", source)
    warnings = [
        line
        for env, labels in sorted(groups.items())
        for label, curves in sorted(labels.items())
        if (line := one_seed_warning(f"{label} on {env}", len(curves)))
    ]
    with (out / "curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["env", "run", "seeds", "step", "mean_return", "ci95_low", "ci95_high"])
        writer.writerows(rows)
    return {
        "png": str(out / "curves.png"),
        "csv": str(out / "curves.csv"),
        "groups": {e: sorted(g) for e, g in groups.items()},
        "warnings": warnings,
    }
