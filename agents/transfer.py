"""Transfer between Atari games (paper App. C.12.1), top to bottom.

For each policy (RIMs, LSTM) and seed:

1. **Pre-train** one agent on the source games in turn: the first source from scratch, each next one
   starting from the previous one's final weights (``run.init_from``), ``source_steps`` each.
2. **Fine-tune** that agent on every target game for ``target_steps``.
3. **From scratch** on every target game, the same ``target_steps``: the baseline.

What transfers: every policy weight (CNN, recurrent core, actor and critic heads). The optimizer
state, learning-rate and clip schedules and the step counter start fresh, as for any new run.
Differing action sets: every stage plays with ALE's full 18-action set (``env.full_action_space``),
so the heads fit every game and an action index means the same joystick move everywhere.

The measure (Taylor & Stone's "total reward", per game): the area under the training learning curve
over the target budget, i.e. the mean of the logged training-episode returns (``rollout/ep_rew_mean``),
averaged over seeds. Transfer = (fine-tuned - scratch) / |scratch|; positive transfer when the
fine-tuned agent's area is larger. The report counts positive-transfer games per policy, as the
paper does (RIMs 9/12, LSTM 3/12).

Every run is an ordinary training run (``rims-rl train`` folders, resumable); the runner skips
finished runs and resumes unfinished ones, so a rerun continues where a crash stopped it. Folders:
``<out>/runs/<Game>/<algo>-<policy>-{pretrain,transfer,scratch}/seed<N>/``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rims_rl.agents.compare import learning_curve
from rims_rl.agents.runs import run_dir_for
from rims_rl.agents.train import ensure_run, resolve_config
from rims_rl.envs import env_kind, env_name

from rims_rl.config import ConfigError, load_config

__all__ = ["STAGES", "load_transfer_config", "plan_transfer", "run_transfer", "transfer_score"]

STAGES = ("pretrain", "transfer", "scratch")
KEYS = {"config", "sources", "targets", "source_steps", "target_steps", "seeds", "policies", "set"}


def load_transfer_config(
    path: str | Path = "atari/transfer.yaml",
    overrides: Sequence[str] = (),
    training_overrides: Sequence[str] = (),
    **choices: Any,
) -> dict[str, Any]:
    """The transfer experiment's YAML, checked (games, budgets, keys).

    ``overrides`` are ``key=value`` strings for this file; ``training_overrides`` extend its ``set``
    list (training-config overrides for every stage); ``choices`` (``sources=[...]``, ``seeds=[...]``,
    ...) replace top-level values where not None, as the command line's flags do.
    """
    config = load_config(path, overrides)
    config.update({key: value for key, value in choices.items() if value is not None})
    if isinstance(config.get("set"), list):
        config["set"] = [*config["set"], *training_overrides]
    unknown, missing = set(config) - KEYS, KEYS - set(config)
    if unknown or missing:
        raise ConfigError(f"transfer config: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
    for key in ("sources", "targets", "seeds", "policies", "set"):
        if not isinstance(config[key], list) or (key != "set" and not config[key]):
            raise ConfigError(f"transfer config: {key} must be a non-empty list")
    for key in ("source_steps", "target_steps"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"transfer config: {key} must be a positive integer, got {config[key]!r}")
    for game in [*config["sources"], *config["targets"]]:
        try:
            kind = env_kind(str(game))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if kind != "atari":
            raise ConfigError(f"transfer runs on Atari games; {game!r} is a {kind} environment")
    for key in ("sources", "targets"):
        names = [env_name(g) for g in config[key]]
        if len(set(names)) != len(names):
            raise ConfigError(f"transfer config: {key} names a game twice")
    overlap = {env_name(g) for g in config["sources"]} & {env_name(g) for g in config["targets"]}
    if overlap:
        raise ConfigError(f"games both source and target: {', '.join(sorted(overlap))}")
    return config


def plan_transfer(config: dict[str, Any], out: str | Path, device: str | None = None) -> list[dict[str, Any]]:
    """Every run of the experiment as a checked training config, in the order they must run.

    Each entry: ``{"policy", "seed", "stage", "game", "config"}``. All configs are resolved (and so
    checked) here, before anything trains.
    """
    runs_root = Path(out) / "runs"
    algo = load_config(config["config"], config["set"])["algo"]  # names the folders: <algo>-<policy>-<stage>
    plan = []
    for policy in config["policies"]:
        for seed in config["seeds"]:
            previous = None
            for game in config["sources"]:
                label = f"{algo}-{policy}-pretrain"
                resolved = _stage(
                    config, runs_root, label, game, policy, seed, config["source_steps"], previous, device
                )
                plan.append(
                    {"policy": policy, "seed": seed, "stage": "pretrain", "game": env_name(game), "config": resolved}
                )
                previous = run_dir_for(resolved)
            for game in config["targets"]:
                for stage, init_from in (("transfer", previous), ("scratch", None)):
                    label = f"{algo}-{policy}-{stage}"
                    steps = config["target_steps"]
                    resolved = _stage(config, runs_root, label, game, policy, seed, steps, init_from, device)
                    plan.append(
                        {"policy": policy, "seed": seed, "stage": stage, "game": env_name(game), "config": resolved}
                    )
    return plan


def _stage(
    config: dict[str, Any],
    runs_root: Path,
    label: str,
    game: str,
    policy: str,
    seed: int,
    steps: int,
    init_from: Path | None,
    device: str | None,
) -> dict[str, Any]:
    """One run's training config: the experiment's settings, the full action set, its folder label."""
    overrides = [*config["set"], "env.full_action_space=true", f"run.out={runs_root}", f"run.label={label}"]
    if init_from is not None:
        overrides.append(f"run.init_from={init_from}")
    return resolve_config(
        config["config"], overrides, env=game, policy=policy, seed=seed, total_steps=steps, device=device
    )


def _area(run_dir: Path) -> float:
    """Mean of the logged training-episode returns: the area under the learning curve per step."""
    _, returns = learning_curve(run_dir, "train")
    return float(np.mean(returns)) if len(returns) else float("nan")


def transfer_score(transfer: float, scratch: float) -> float:
    """(fine-tuned - scratch) / |scratch|; +-inf when scratch is exactly 0 (the sign still counts)."""
    if scratch == 0:
        return float(np.sign(transfer - scratch) * np.inf) if transfer != scratch else 0.0
    return (transfer - scratch) / abs(scratch)


def run_transfer(
    config: dict[str, Any],
    out: str | Path,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse / resume) every run of the plan, then write results.csv and results.md."""
    out = Path(out)
    plan = plan_transfer(config, out, device)
    for entry in plan:
        run_dir = run_dir_for(entry["config"])
        status = ensure_run(entry["config"], run_dir)
        log(f"{entry['policy']} seed {entry['seed']} {entry['stage']} {entry['game']}: {status} ({run_dir})")

    rows = []
    for policy in config["policies"]:
        for game in map(env_name, config["targets"]):
            areas = {
                stage: [
                    _area(run_dir_for(e["config"]))
                    for e in plan
                    if (e["policy"], e["game"], e["stage"]) == (policy, game, stage)
                ]
                for stage in ("transfer", "scratch")
            }
            transfer, scratch = float(np.mean(areas["transfer"])), float(np.mean(areas["scratch"]))
            score = transfer_score(transfer, scratch)
            rows.append(
                {
                    "policy": policy,
                    "game": game,
                    "seeds": len(areas["transfer"]),
                    "transfer_area": transfer,
                    "scratch_area": scratch,
                    "transfer_score": score,
                    "positive": bool(transfer > scratch),
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(_table(rows, config))
    counts = {p: sum(r["positive"] for r in rows if r["policy"] == p) for p in config["policies"]}
    return {"rows": rows, "positive": counts, "csv": str(out / "results.csv"), "md": str(out / "results.md")}


def _table(rows: list[dict[str, Any]], config: dict[str, Any]) -> str:
    targets = len(config["targets"])
    lines = [
        f"Transfer from {', '.join(map(env_name, config['sources']))} ({config['source_steps']} steps each, in turn) "
        f"to each target ({config['target_steps']} steps), against training from scratch on the target for the same "
        f"steps; seeds {', '.join(map(str, config['seeds']))}. Area: mean training-episode return over the target "
        "budget (mean over seeds). Transfer = (fine-tuned - scratch) / |scratch|.",
        "",
        "| policy | game | fine-tuned area | scratch area | transfer | positive |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row["policy"],
            row["game"],
            f"{row['transfer_area']:.2f}",
            f"{row['scratch_area']:.2f}",
            f"{row['transfer_score']:+.3f}",
            "yes" if row["positive"] else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for policy in config["policies"]:
        positive = sum(r["positive"] for r in rows if r["policy"] == policy)
        lines.append(f"- {policy}: positive transfer in {positive}/{targets} games")
    return "\n".join(lines) + "\n"
