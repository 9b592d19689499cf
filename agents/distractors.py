"""The novel-distractors experiment (paper Sec. 4.2.2, Fig. 5), top to bottom.

1. Train: a sweep (``configs/sweeps/pickup_sets.yaml`` by default: RIMs reading an input set, RIMs reading
   one row, the LSTM on either, 3 seeds) on the ``train`` split of our MiniGrid pickup task, through
   :func:`rims_rl.agents.sweep.run_sweep` (finished runs reused, unfinished ones resumed, runs side by side).
2. Evaluate every run's final model on each evaluation split (``known``, ``novel``: same numbers of
   distractors, all never seen; ``crowded``: known and novel together), ``episodes`` episodes each.
3. Write ``results.csv`` (one row per run and split, with the run's 95% Wilson interval), ``results.md``
   (per variant and split: the mean over seeds with its 95% bootstrap CI over seeds, each seed's rate and
   Wilson interval; and each variant's drop from known to novel, with its CI over seeds) and
   ``results.png`` (bars with the CIs over seeds) in the sweep's output folder.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.agents.config import ConfigError, SweepConfig, load, to_dict
from rims_rl.agents.evaluate import evaluate_run
from rims_rl.agents.stats import mean_ci, success_ci
from rims_rl.agents.sweep import load_sweep, run_sweep
from rims_rl.envs import EVAL_SPLITS, is_pickup_id

__all__ = ["run_distractors"]


def run_distractors(
    path: str | Path = "sweeps/pickup_sets.yaml",
    *,
    out: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
    episodes: int = 200,
    overrides: Sequence[tuple[str, Any]] = (),
    workers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the sweep ``path`` (its ``seeds`` and ``variants`` only, when given), evaluate every run on each
    evaluation split and write the table and the plot. Everything is checked before any run starts.

    ``overrides``: ``(key, value)`` pairs for every run's training config (``--set``, ``total_steps``, ...)."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be positive, got {episodes}")
    spec = to_dict(load(SweepConfig, path))
    if seeds is not None:
        if not seeds:
            raise ConfigError("--seeds: give at least one seed")
        spec["grid"]["run.seed"] = list(seeds)
    if variants is not None:
        named = spec.get("variants") or {}
        unknown = sorted(set(variants) - set(named))
        if unknown:
            has = f"it has {', '.join(named)}" if named else "it has no variants"
            raise ConfigError(f"--variants: {', '.join(unknown)} not in {path}; {has}")
        spec["variants"] = {name: named[name] for name in variants}
    if out is not None:
        spec["out"] = str(out)
    sweep = load_sweep(spec, overrides, workers=workers, name=str(path))
    for run in sweep.runs:
        env = run.config["env"]
        if not is_pickup_id(env["id"]) or env.get("split", "train") != "train":
            raise ConfigError(f"{path}: the distractors experiment trains on RimsRL/Pickup-v0 with env.split=train")

    result = run_sweep(sweep, log=log)
    if result["interrupted"]:
        raise KeyboardInterrupt
    if result["failed"]:
        raise ConfigError(f"{result['failed']} run(s) failed; see {result['csv']}")

    rows = []
    for run in sweep.runs:
        variant, seed = run.settings.get("variant", "default"), run.config["run"]["seed"]
        for split in EVAL_SPLITS:
            evaluation = evaluate_run(run.run_dir, episodes=episodes, distractors=split)
            successes = int((np.asarray(evaluation["returns"]) > 0).sum())
            low, high = success_ci(successes, episodes)
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "split": split,
                    "episodes": episodes,
                    "successes": successes,
                    "success_rate": successes / episodes,
                    "wilson_low": low,
                    "wilson_high": high,
                    "mean_return": evaluation["mean_return"],
                }
            )
            log(f"{variant} seed {seed} {split}: success {successes}/{episodes}")

    out = Path(sweep.out)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows)
    budget = sweep.runs[0].config["total_steps"]
    (out / "results.md").write_text(table(summary, rows, budget, episodes))
    _plot(summary, out / "results.png")
    return {"rows": rows, "summary": summary, "csv": str(out / "results.csv"), "md": str(out / "results.md")}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (variant, split): the success rates of the seeds, their mean and 95% bootstrap CI; per variant:
    the drop from known to novel, seed by seed, its mean and CI."""
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    rate = {(row["variant"], row["seed"], row["split"]): row["success_rate"] for row in rows}
    seeds = {variant: sorted({row["seed"] for row in rows if row["variant"] == variant}) for variant in variants}
    splits = {}
    for variant in variants:
        for split in EVAL_SPLITS:
            rates = np.array([rate[variant, seed, split] for seed in seeds[variant]])
            splits[variant, split] = {"mean": float(rates.mean()), "ci95": mean_ci(rates), "per_seed": rates.tolist()}
    drops = {}
    for variant in variants:
        drop = np.array([rate[variant, seed, "known"] - rate[variant, seed, "novel"] for seed in seeds[variant]])
        drops[variant] = {"mean": float(drop.mean()), "ci95": mean_ci(drop), "per_seed": drop.tolist()}
    return {"splits": splits, "drops": drops, "seeds": seeds}


def table(summary: dict[str, Any], rows: list[dict[str, Any]], budget: int, episodes: int) -> str:
    """The Markdown tables of :func:`summarise` (``results.md``)."""
    wilson = {(r["variant"], r["seed"], r["split"]): (r["wilson_low"], r["wilson_high"]) for r in rows}
    lines = [
        f"Success rate on RimsRL/Pickup-v0, {budget} training steps per run, {episodes} evaluation episodes per "
        "run and split. Mean over seeds with its 95% bootstrap CI over seeds; per seed: the rate and its "
        "95% Wilson interval. known: the training pool; novel: as many distractors, all never seen in "
        "training; crowded: known and novel together (3-5).",
        "",
        "| variant | distractors | success (mean over seeds) | 95% CI over seeds | per seed (Wilson 95%) |",
        "|---|---|---|---|---|",
    ]
    for (variant, split), stats in summary["splits"].items():
        low, high = stats["ci95"]
        per_seed = ", ".join(
            f"{rate:.3f} ({wilson[variant, seed, split][0]:.2f}-{wilson[variant, seed, split][1]:.2f})"
            for seed, rate in zip(summary["seeds"][variant], stats["per_seed"], strict=True)
        )
        lines.append(f"| {variant} | {split} | {stats['mean']:.3f} | {low:.3f} to {high:.3f} | {per_seed} |")
    lines += [
        "",
        "Drop from known to novel distractors (known minus novel, seed by seed; smaller is better):",
        "",
        "| variant | drop (mean over seeds) | 95% CI over seeds | per seed |",
        "|---|---|---|---|",
    ]
    for variant, stats in summary["drops"].items():
        low, high = stats["ci95"]
        per_seed = ", ".join(f"{drop:+.3f}" for drop in stats["per_seed"])
        lines.append(f"| {variant} | {stats['mean']:+.3f} | {low:+.3f} to {high:+.3f} | {per_seed} |")
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(summary["drops"])
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for index, variant in enumerate(variants):
        stats = [summary["splits"][variant, split] for split in EVAL_SPLITS]
        means = np.array([s["mean"] for s in stats])
        errors = np.array([[s["mean"] - s["ci95"][0], s["ci95"][1] - s["mean"]] for s in stats]).T
        ax.bar(np.arange(len(EVAL_SPLITS)) + index * width, means, width, yerr=errors, capsize=3, label=variant)
    centres = np.arange(len(EVAL_SPLITS)) + width * (len(variants) - 1) / 2
    ax.set_xticks(centres, [f"{split} distractors" for split in EVAL_SPLITS])
    ax.set_ylabel("success rate (mean over seeds, 95% CI)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
