"""The policies' defaults measured on the memory suite, against sb3-contrib's own recurrent policy.

    python benchmarks/policy_defaults.py [--steps 100000] [--seeds 0 1 2] [--workers 2] [--out runs/defaults]
        [--tasks ID ...] [--policies NAME ...] [--rows rows.yaml]

Each policy is built exactly as a user would build it, with no ``policy_kwargs`` unless its row says
otherwise, and trained by sb3-contrib's ``RecurrentPPO`` with the same PPO settings (8 envs x 128 steps,
batch 256, 10 epochs, lr 7e-4) on the memory suite (``rims_rl.envs.registration.MEMORY_SUITE``, also
``configs/classic/memory.yaml`` for the CLI):

- ``RimsRL/RepeatCard-v0``: name the card shown 4 steps ago (dense recall; -0.5 by guessing, 1 perfect);
- ``RimsRL/HoldCue-v0`` / ``RimsRL/HoldCueLong-v0``: name the first card after 8 / 32 blank steps (long hold);
- ``RimsRL/HoldCueDistract-v0``: the same through 8 random cards to ignore;
- ``RimsRL/CartPoleNoVel-v1``: CartPole without velocities (22 by random play, 500 perfect).

``--rows FILE`` adds rows of one's own: a YAML mapping of row name to ``[policy, policy_kwargs]`` (a policy
is sb3-contrib's name or ``module:Class``), e.g. ``RIMs 6x16 k2: [rims_rl.policies:RimsPolicy, {rims_kwargs:
{num_units: 6, unit_size: 16, k_active: 2}}]``; ``--policies`` picks rows by name.

Rows: ``MlpLstmPolicy`` (sb3-contrib: LSTM 256, a critic LSTM of its own), our ``LstmPolicy`` and
``RimsPolicy`` with their defaults, both of ours with ``critic_core="shared"`` (the layout of the PPO code
the paper used, our default before), RIMs with 2 of 4 units active (the default before), and the default
LSTM with another Adam implementation (rounding only). Score: the mean return of 50 deterministic
evaluation episodes after training. Each run is one process with one thread; results are cached per run
in ``--out`` as JSON, so an interrupted measurement resumes with the runs it had not finished. Prints a
Markdown table: per task and row, the mean over seeds with its 95% bootstrap CI over seeds, and each seed.

``--same-as-sb3 STEPS`` instead trains ``LstmPolicy`` and ``MlpLstmPolicy`` side by side for STEPS with
these settings (CartPole without velocities, seed 0) and prints how far apart their parameters end up and
the time each took: the baseline is sb3-contrib's policy computed by our code, so the difference is
rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rims_rl.envs.registration import MEMORY_SUITE

TASKS = tuple(MEMORY_SUITE)
POLICIES = {
    "sb3-contrib MlpLstmPolicy": ("MlpLstmPolicy", {}),
    "LstmPolicy (default)": ("rims_rl.policies:LstmPolicy", {}),
    "RimsPolicy (default)": ("rims_rl.policies:RimsPolicy", {}),
    "LstmPolicy, shared core": ("rims_rl.policies:LstmPolicy", {"critic_core": "shared"}),
    # RIMs 4 x 32 with 2 of 4 active (the default until these measurements), with each critic layout.
    "RimsPolicy, 2 of 4 active": ("rims_rl.policies:RimsPolicy", {"rims_kwargs": {"k_active": 2}}),
    "RimsPolicy, 2 of 4 active, shared core": (
        "rims_rl.policies:RimsPolicy",
        {"rims_kwargs": {"k_active": 2}, "critic_core": "shared"},
    ),
    # The default LSTM with only its rounding changed (Adam one tensor at a time, as sb3-contrib's): how
    # far a run's outcome moves when nothing but float rounding does.
    "LstmPolicy (default), Adam unfused": ("rims_rl.policies:LstmPolicy", {"optimizer_kwargs": {"fused": False}}),
}
PPO = {"n_steps": 128, "batch_size": 256, "n_epochs": 10, "learning_rate": 7e-4}


def build(name: str, task: str, seed: int, rows: dict | None = None):
    """The ``RecurrentPPO`` of row ``name`` on ``task``: 8 envs, these PPO settings, one thread."""
    import importlib

    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    import rims_rl.envs  # noqa: F401  (registers the tasks)

    torch.set_num_threads(1)
    policy, kwargs = {**POLICIES, **(rows or {})}[name]
    if ":" in policy:
        module, attribute = policy.split(":")
        policy = getattr(importlib.import_module(module), attribute)
    env = make_vec_env(task, n_envs=8, seed=seed)
    return RecurrentPPO(policy, env, policy_kwargs=kwargs, seed=seed, device="cpu", **PPO)


def train_one(task: str, name: str, seed: int, steps: int, out: str, rows: dict | None = None) -> dict:
    path = Path(out) / f"{task.replace('/', '-')}__{name.replace(' ', '_').replace(',', '')}__{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    start = time.perf_counter()
    model = build(name, task, seed, rows).learn(steps)
    evaluation = make_vec_env(task, n_envs=1, seed=seed + 10_000)
    mean, _ = evaluate_policy(model, evaluation, n_eval_episodes=50, deterministic=True)
    result = {
        "task": task,
        "policy": name,
        "seed": seed,
        "steps": steps,
        "return": float(mean),
        "seconds": time.perf_counter() - start,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def same_as_sb3(steps: int) -> None:
    models, seconds = [], []
    for name in ("LstmPolicy (default)", "sb3-contrib MlpLstmPolicy"):
        model = build(name, TASKS[0], seed=0)
        start = time.perf_counter()
        models.append(model.learn(steps))
        seconds.append(time.perf_counter() - start)
    ours, theirs = (model.policy for model in models)
    updates = steps // (8 * PPO["n_steps"]) * PPO["n_epochs"] * (8 * PPO["n_steps"] // PPO["batch_size"])
    gap = max((ours.get_parameter(name) - p).abs().max().item() for name, p in theirs.named_parameters())
    print(f"{steps} steps ({updates} updates): largest parameter difference {gap:.2e}")
    print(f"seconds: LstmPolicy {seconds[0]:.1f}, MlpLstmPolicy {seconds[1]:.1f} ({seconds[1] / seconds[0]:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000, help="environment steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--policies", nargs="+", help="rows to train, by name (default: every built-in row)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="tasks (default: the suite)")
    parser.add_argument("--rows", help="YAML file of extra rows: name -> [policy, policy_kwargs]")
    parser.add_argument("--out", default="runs/defaults", help="per-run JSON results (reused when present)")
    parser.add_argument("--same-as-sb3", type=int, metavar="STEPS", help="compare LstmPolicy with MlpLstmPolicy")
    options = parser.parse_args()
    if options.same_as_sb3:
        same_as_sb3(options.same_as_sb3)
        return
    rows = load_rows(options.rows) if options.rows else {}
    names = options.policies or list(POLICIES) + list(rows)
    unknown = [name for name in names if name not in {**POLICIES, **rows}]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; known: {', '.join([*POLICIES, *rows])}")
    # Row by row, so that the rows listed first are complete first when time runs short.
    jobs = [(task, name, seed) for name in names for task in options.tasks for seed in options.seeds]
    with ProcessPoolExecutor(options.workers) as pool:
        futures = [pool.submit(train_one, *job, options.steps, options.out, rows) for job in jobs]
        results = [future.result() for future in futures]
    print(table(results, options.tasks, names, options.steps))


def load_rows(path: str) -> dict[str, tuple[str, dict]]:
    """Rows of one's own from a YAML file: ``name: [policy, policy_kwargs]``."""
    import yaml

    with open(path) as handle:
        rows = yaml.safe_load(handle)
    if not isinstance(rows, dict) or not all(
        isinstance(row, list) and len(row) == 2 and isinstance(row[0], str) and isinstance(row[1], dict)
        for row in rows.values()
    ):
        raise SystemExit(f"{path}: expected a mapping of row name to [policy, policy_kwargs]")
    return {str(name): (row[0], row[1]) for name, row in rows.items()}


def table(results: list[dict], tasks, names, steps: int) -> str:
    """The Markdown table of mean returns over seeds, with their 95% bootstrap CIs."""
    from rims_rl.agents.stats import mean_ci

    lines = [
        f"RecurrentPPO, {steps} steps per run, {PPO}, 8 envs; mean of 50 deterministic episodes per run",
        "",
        "| task (random / perfect) | policy | mean over seeds | 95% CI over seeds | per seed | minutes per run |",
        "|---|---|---|---|---|---|",
    ]
    for task in tasks:
        scores = MEMORY_SUITE[task]
        for name in names:
            mine = sorted((r for r in results if r["task"] == task and r["policy"] == name), key=lambda r: r["seed"])
            returns = [r["return"] for r in mine]
            low, high = mean_ci(returns)
            minutes = statistics.mean(r["seconds"] for r in mine) / 60
            per_seed = " / ".join(f"{value:.2f}" for value in returns)
            lines.append(
                f"| {task} ({scores['random']:g} / {scores['perfect']:g}) | {name} | {statistics.mean(returns):.2f} "
                f"| {low:.2f} to {high:.2f} | {per_seed} | {minutes:.1f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
