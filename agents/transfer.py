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

from rims_rl.agents.config import ConfigError, TransferConfig, load
from rims_rl.agents.runs import check_writable, learning_curve, run_dir_for
from rims_rl.agents.train import ensure_run, resolve_config
from rims_rl.envs import env_kind, env_name

__all__ = ["STAGES", "load_transfer_config", "plan_transfer", "run_transfer", "transfer_score"]

STAGES = ("pretrain", "transfer", "scratch")


def load_transfer_config(
    path: str | Path = "atari/transfer.yaml", overrides: Sequence[tuple[str, Any]] = ()
) -> TransferConfig:
    """The transfer experiment's YAML with ``(key, value)`` overrides (the command line's ``--sources``,
    ``--seeds``, ...), checked: keys and types by the schema, then the games (Atari, none twice, none
    both source and target)."""
    config = load(TransferConfig, path, overrides)
    for game in [*config.sources, *config.targets]:
        try:
            kind = env_kind(game)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if kind != "atari":
            raise ConfigError(f"transfer runs on Atari games; {game!r} is a {kind} environment")
    for key in ("sources", "targets"):
        names = [env_name(g) for g in getattr(config, key)]
        if len(set(names)) != len(names):
            raise ConfigError(f"transfer config: {key} names a game twice")
    overlap = {env_name(g) for g in config.sources} & {env_name(g) for g in config.targets}
    if overlap:
        raise ConfigError(f"games both source and target: {', '.join(sorted(overlap))}")
    return config


def plan_transfer(
    config: TransferConfig, out: str | Path, training_overrides: Sequence[tuple[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Every run of the experiment as a checked training config, in the order they must run.

    Each entry: ``{"policy", "seed", "stage", "game", "config"}``. ``training_overrides`` (the command
    line's ``--set`` and ``--device``) apply to every stage after the file's ``overrides``. All configs
    are resolved (and so checked) here, before anything trains.
    """
    runs_root = Path(out) / "runs"
    common = [*config.overrides.items(), *training_overrides]
    algo = resolve_config(config.config, common).algo  # names the folders: <algo>-<policy>-<stage>
    plan = []

    def stage(name: str, game: str, policy: str, seed: int, steps: int, init_from: Path | None):
        """One run's training config: the experiment's settings, the full action set, its folder label."""
        overrides = [
            *common,
            ("env.id", game),
            ("env.full_action_space", True),
            ("policy", policy),
            ("run.seed", seed),
            ("total_steps", steps),
            ("run.out", str(runs_root)),
            ("run.label", f"{algo}-{policy}-{name}"),
            ("run.init_from", None if init_from is None else str(init_from)),
        ]
        resolved = resolve_config(config.config, overrides)
        plan.append({"policy": policy, "seed": seed, "stage": name, "game": env_name(game), "config": resolved})
        return resolved

    for policy in config.policies:
        for seed in config.seeds:
            previous = None
            for game in config.sources:
                previous = run_dir_for(stage("pretrain", game, policy, seed, config.source_steps, previous))
            for game in config.targets:
                stage("transfer", game, policy, seed, config.target_steps, previous)
                stage("scratch", game, policy, seed, config.target_steps, None)
    return plan


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
    config: TransferConfig,
    out: str | Path,
    training_overrides: Sequence[tuple[str, Any]] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse / resume) every run of the plan, then write results.csv and results.md."""
    out = Path(out)
    plan = plan_transfer(config, out, training_overrides)
    check_writable(out)
    for entry in plan:
        run_dir = run_dir_for(entry["config"])
        status = ensure_run(entry["config"], run_dir)
        log(f"{entry['policy']} seed {entry['seed']} {entry['stage']} {entry['game']}: {status} ({run_dir})")

    rows = []
    for policy in config.policies:
        for game in map(env_name, config.targets):
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
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(_table(rows, config))
    counts = {p: sum(r["positive"] for r in rows if r["policy"] == p) for p in config.policies}
    return {"rows": rows, "positive": counts, "csv": str(out / "results.csv"), "md": str(out / "results.md")}


def _table(rows: list[dict[str, Any]], config: TransferConfig) -> str:
    targets = len(config.targets)
    lines = [
        f"Transfer from {', '.join(map(env_name, config.sources))} ({config.source_steps} steps each, in turn) "
        f"to each target ({config.target_steps} steps), against training from scratch on the target for the same "
        f"steps; seeds {', '.join(map(str, config.seeds))}. Area: mean training-episode return over the target "
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
    for policy in config.policies:
        positive = sum(r["positive"] for r in rows if r["policy"] == policy)
        lines.append(f"- {policy}: positive transfer in {positive}/{targets} games")
    return "\n".join(lines) + "\n"
