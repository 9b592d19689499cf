"""The novel-distractors experiment (paper Sec. 4.2.2, Fig. 5), top to bottom.

For each policy (RIMs, LSTM) and seed: train on the ``train`` split of ``configs/minigrid/pickup.yaml``
(or continue an unfinished run from its checkpoint), then evaluate the final model on ``known`` and
``novel`` distractors. Writes ``results.csv`` (one row per run and split), ``results.md`` (success
rate per policy and split: mean over seeds with a 95% bootstrap CI over seeds, and the pooled
episodes' rate) and ``results.png`` (bars with those CIs) in the output folder.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.agents.config import ConfigError
from rims_rl.agents.evaluate import evaluate_run
from rims_rl.agents.runs import run_dir_for
from rims_rl.agents.stats import mean_ci, success_ci
from rims_rl.agents.train import ensure_run, resolve_config
from rims_rl.envs import is_pickup_id

__all__ = ["run_distractors"]

SPLITS = ("known", "novel")


def run_distractors(
    config_path: str | Path = "minigrid/pickup.yaml",
    seeds: Sequence[int] = (0, 1, 2),
    policies: Sequence[str] = ("rims", "lstm"),
    episodes: int = 200,
    out: str | Path = "runs/experiments/distractors",
    overrides: Sequence[tuple[str, Any]] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train every (policy, seed), evaluate each on both splits, write the table and the plot.

    ``overrides``: ``(key, value)`` pairs for the training config of every run (``total_steps``, ...)."""
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    out = Path(out)
    configs = {
        (policy, seed): resolve_config(
            config_path,
            [*overrides, ("run.out", str(out / "runs")), ("policy", policy), ("run.seed", seed)],
        )
        for policy in policies
        for seed in seeds
    }
    for config in configs.values():
        if not is_pickup_id(config.env.id) or config.env.options.get("split", "train") != "train":
            raise ConfigError("the distractors experiment trains on RimsRL/Pickup-v0 with env.split=train")

    rows = []
    for (policy, seed), config in configs.items():
        run_dir = run_dir_for(config)
        log(f"{policy} seed {seed}: {config.total_steps} steps in {run_dir}")
        log(f"{policy} seed {seed}: {ensure_run(config, run_dir)}")
        for split in SPLITS:
            result = evaluate_run(run_dir, episodes=episodes, distractors=split)
            returns = np.asarray(result["returns"])
            rows.append(
                {
                    "policy": policy,
                    "seed": seed,
                    "split": split,
                    "episodes": len(returns),
                    "successes": int((returns > 0).sum()),
                    "success_rate": result["success_rate"],
                    "mean_return": result["mean_return"],
                }
            )
            log(f"{policy} seed {seed} {split}: success {result['success_rate']:.3f}")

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = _summarise(rows)
    budget = next(iter(configs.values())).total_steps
    (out / "results.md").write_text(_table(summary, seeds, budget, episodes))
    _plot(summary, out / "results.png")
    return {"rows": rows, "summary": summary, "csv": str(out / "results.csv"), "md": str(out / "results.md")}


def _summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    summary = {}
    for key in dict.fromkeys((row["policy"], row["split"]) for row in rows):
        mine = [row for row in rows if (row["policy"], row["split"]) == key]
        rates = np.array([row["success_rate"] for row in mine])
        summary[key] = {
            "mean": float(rates.mean()),
            "ci95": mean_ci(rates),
            "pooled": sum(row["successes"] for row in mine) / sum(row["episodes"] for row in mine),
            "pooled_ci95": success_ci(sum(row["successes"] for row in mine), sum(row["episodes"] for row in mine)),
            "per_seed": rates.tolist(),
        }
    return summary


def _table(summary: dict, seeds: Sequence[int], budget: int, episodes: int) -> str:
    lines = [
        f"Success rate on RimsRL/Pickup-v0, {budget} training steps per run, seeds {', '.join(map(str, seeds))}, "
        f"{episodes} evaluation episodes per run and split. Mean over seeds (95% bootstrap CI over seeds); "
        "pooled: all episodes together (95% Wilson interval).",
        "",
        "| policy | distractors | success (mean over seeds) | 95% CI | pooled | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for (policy, split), stats in summary.items():
        low, high = stats["ci95"]
        seeds_text = ", ".join(f"{rate:.2f}" for rate in stats["per_seed"])
        pooled_low, pooled_high = stats["pooled_ci95"]
        pooled = f"{stats['pooled']:.3f} ({pooled_low:.3f} to {pooled_high:.3f})"
        cells = [policy, split, f"{stats['mean']:.3f}", f"{low:.3f} to {high:.3f}", pooled]
        lines.append("| " + " | ".join([*cells, seeds_text]) + " |")
    return "\n".join(lines) + "\n"


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(policy for policy, _ in summary))
    width = 0.8 / len(policies)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for index, policy in enumerate(policies):
        stats = [summary[(policy, split)] for split in SPLITS]
        means = np.array([s["mean"] for s in stats])
        errors = np.array([[s["mean"] - s["ci95"][0], s["ci95"][1] - s["mean"]] for s in stats]).T
        ax.bar(np.arange(len(SPLITS)) + index * width, means, width, yerr=errors, capsize=4, label=policy)
    ax.set_xticks(np.arange(len(SPLITS)) + width * (len(policies) - 1) / 2, [f"{s} distractors" for s in SPLITS])
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
