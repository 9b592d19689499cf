"""Learning curves of RIMs against LSTM runs: mean and 95% CI across seeds, as a PNG and a CSV."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rims_rl.agents.evaluate import bootstrap_ci
from rims_rl.envs import env_name

from rims_rl.config import ConfigError

__all__ = ["compare_runs", "find_runs", "learning_curve"]

POINTS = 50  # grid points per curve


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (holding config.yaml) given directly or anywhere below the given folders."""
    runs = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"no such run folder: {path}")
        found = [path] if (path / "config.yaml").is_file() else sorted(p.parent for p in path.rglob("config.yaml"))
        runs.extend(found)
    if not runs:
        raise ConfigError("no run folders (with config.yaml) found in " + ", ".join(map(str, paths)))
    return runs


def learning_curve(run_dir: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, returns) of one run: training episodes (``rollout/ep_rew_mean`` in progress.csv) or
    periodic evaluations (evaluations.npz)."""
    if source == "eval":
        path = run_dir / "evaluations.npz"
        if not path.is_file():
            return np.empty(0), np.empty(0)
        data = np.load(path)
        return data["timesteps"].astype(float), data["results"].mean(axis=1)
    steps, returns = [], []
    # A resumed run keeps its earlier log parts beside progress.csv (see agents.train).
    for path in [*sorted(run_dir.glob("progress.part*.csv")), run_dir / "progress.csv"]:
        if not path.is_file():
            continue
        with path.open() as handle:
            for row in csv.DictReader(handle):
                step, value = row.get("time/total_timesteps"), row.get("rollout/ep_rew_mean")
                if step not in (None, "") and value not in (None, ""):
                    steps.append(float(step))
                    returns.append(float(value))
    order = np.argsort(steps, kind="stable")
    return np.asarray(steps)[order], np.asarray(returns)[order]


def compare_runs(paths: list[str | Path], out: str | Path, source: str = "train") -> dict[str, Any]:
    """Group runs by environment and ``<algo>-<policy>``; write ``curves.png`` and ``curves.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if source not in ("train", "eval"):
        raise ConfigError(f"--source must be train or eval, got {source!r}")
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run_dir in find_runs(paths):
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        steps, returns = learning_curve(run_dir, source)
        if len(steps):
            label = f"{config['algo']}-{config['policy']}"
            groups[env_name(config["env"]["id"])][label].append((steps, returns))
    if not groups:
        raise ConfigError(f"the runs have no {source} learning curves yet")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    figure, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for axis, (env, labels) in zip(axes[0], sorted(groups.items()), strict=True):
        for label, curves in sorted(labels.items()):
            # Seeds are compared on the steps that all of them reached.
            end = min(steps[-1] for steps, _ in curves)
            start = max(steps[0] for steps, _ in curves)
            grid = np.linspace(start, end, POINTS) if end > start else np.array([end])
            table = np.stack([np.interp(grid, steps, returns) for steps, returns in curves])
            mean = table.mean(axis=0)
            bounds = np.array([bootstrap_ci(column) for column in table.T])
            axis.plot(grid, mean, label=f"{label} ({len(curves)} seed{'s' if len(curves) != 1 else ''})")
            axis.fill_between(grid, bounds[:, 0], bounds[:, 1], alpha=0.25)
            for step, m, (low, high) in zip(grid, mean, bounds, strict=True):
                rows.append([env, label, len(curves), int(step), m, low, high])
        axis.set_title(env)
        axis.set_xlabel("environment steps")
        axis.set_ylabel("episode return" + (" (evaluation)" if source == "eval" else " (training)"))
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=120)
    plt.close(figure)
    with (out / "curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["env", "run", "seeds", "step", "mean_return", "ci95_low", "ci95_high"])
        writer.writerows(rows)
    return {
        "png": str(out / "curves.png"),
        "csv": str(out / "curves.csv"),
        "groups": {e: sorted(g) for e, g in groups.items()},
    }
