"""End-to-end PPO training throughput on Atari (environment steps per second), measured in one run.

Four agents with the PPO settings of ``configs/atari/ppo_rims.yaml`` (8 envs, n_steps 128, 4
epochs, batch 256) on the same environment: feed-forward PPO (SB3 ``CnnPolicy``, frame stack 4),
sb3-contrib's stock ``CnnLstmPolicy``, our same-structure LSTM policy and our RIMs policy. After a
warm-up iteration each, the agents take turns for ``--iterations`` rounds; the table prints each
agent's steps/s (from its median iteration), the ratios, and the median seconds of an iteration's two
phases: collecting the rollout and the update (epochs of minibatch gradient steps). ``--python-loop``
adds a fifth agent, the RIMs policy with the compiled time loop off (``RIMS_RL_NATIVE=0`` during its
turns), to measure what the compiled loop gives in the same run. ``--sets`` adds the RIMs and LSTM policies
reading input sets (``policy_kwargs.features: set``: 49 rows of the Nature CNN's last map on Atari),
compared with the RIMs policy reading one row.
``--critics`` adds the RIMs policy with each critic layout the config does not use (``separate``: a critic
core of its own; ``shared``: the actor's core; ``none``: a feed-forward critic on the features).
``--config minigrid/pickup.yaml`` measures our policies on
the MiniGrid task (SB3's feed-forward and stock agents need images, so they are left out there).

    python benchmarks/bench_train.py [--env Pong] [--iterations 3] [--python-loop] [--sets] [--critics]
        [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from unittest import mock

import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from rims_rl.agents.config import to_dict
from rims_rl.agents.train import build_model, resolve_config, schedule
from rims_rl.envs import make_env

FEED_FORWARD = "PPO CnnPolicy (feed-forward)"
STOCK = "RecurrentPPO CnnLstmPolicy (stock)"
ONE_ROW = "RimsPPO, our RIMs policy"
PYTHON_LOOP = "RimsPPO, our RIMs policy, Python time loop (RIMS_RL_NATIVE=0)"


class CollectionTimer(BaseCallback):
    """Seconds spent collecting the rollout; the rest of an iteration is the update."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.seconds = time.perf_counter() - self._start

    def _on_step(self) -> bool:
        return True


def one_iteration(model, native: bool = True) -> tuple[float, float]:
    """Seconds for one PPO iteration (collect n_steps x n_envs, then update), and of it collecting."""
    timer = CollectionTimer()
    with mock.patch.dict(os.environ, {"RIMS_RL_NATIVE": "1" if native else "0"}):
        start = time.perf_counter()
        model.learn(model.n_steps * model.n_envs, reset_num_timesteps=False, callback=timer)
        return time.perf_counter() - start, timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="atari/ppo_rims.yaml", help="training config (default: %(default)s)")
    parser.add_argument("--env", help="environment (default: the config's)")
    parser.add_argument("--iterations", type=int, default=5, help="timed PPO iterations per agent")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--python-loop", action="store_true", help="also time RIMs with the compiled loop off")
    parser.add_argument("--sets", action="store_true", help="also time the RIMs and LSTM policies on input sets")
    parser.add_argument(
        "--critics", action="store_true", help="also time the RIMs policy with each other critic layout"
    )
    parser.add_argument("--output", help="also write the Markdown table to this file")
    args = parser.parse_args()

    base = [("run.device", args.device)] + ([("env.id", args.env)] if args.env else [])

    def ours(*overrides):
        return resolve_config(args.config, [*base, *overrides])

    config = ours()
    hyper = {key: schedule(value) for key, value in to_dict(config.ppo).items() if value is not None}
    device = torch.device(args.device)
    images = config.policy_kwargs.features_extractor == "nature_cnn"
    agents = {}
    if images:
        agents[FEED_FORWARD] = lambda env: PPO("CnnPolicy", env, device=device, seed=0, **hyper)
        agents[STOCK] = lambda env: RecurrentPPO("CnnLstmPolicy", env, device=device, seed=0, **hyper)
    lstm = ours(("policy", "lstm"))
    agents["RimsPPO, our LSTM policy"] = lambda env: build_model(lstm, env, device)
    agents[ONE_ROW] = lambda env: build_model(config, env, device)
    if args.python_loop:
        agents[PYTHON_LOOP] = lambda env: build_model(config, env, device)
    if args.sets:
        sets = ours(("policy_kwargs.features", "set"))
        lstm_sets = ours(("policy_kwargs.features", "set"), ("policy", "lstm"))
        agents["RimsPPO, our RIMs policy, input set"] = lambda env: build_model(sets, env, device)
        agents["RimsPPO, our LSTM policy, input set flattened"] = lambda env: build_model(lstm_sets, env, device)
    if args.critics:  # the config's layout is the one-row agent above; the others beside it
        for critic in ("separate", "shared", "none"):
            if critic != config.policy_kwargs.critic_core:
                other = ours(("policy_kwargs.critic_core", critic))
                agents[f"RimsPPO, our RIMs policy, critic {critic}"] = lambda env, c=other: build_model(c, env, device)
    # All agents live side by side and take turns, one iteration each per round, so drifts in the
    # machine's speed hit them alike; each agent's rate comes from its median iteration.
    envs = {name: make_env(config.env.settings(), seed=0) for name in agents}
    try:
        models = {name: make(envs[name]) for name, make in agents.items()}
        for name, model in models.items():
            one_iteration(model, native=name != PYTHON_LOOP)  # warm-up
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in agents}
        for round_ in range(args.iterations):
            for name, model in models.items():
                times[name].append(one_iteration(model, native=name != PYTHON_LOOP))
            print(f"round {round_ + 1}/{args.iterations} done", flush=True)
    finally:
        for env in envs.values():
            env.close()
    steps = {name: model.n_steps * model.n_envs for name, model in models.items()}
    results = {name: steps[name] / statistics.median(total for total, _ in runs) for name, runs in times.items()}
    # Medians of each phase on their own: where an agent's extra time goes.
    collect = {name: statistics.median(part for _, part in runs) for name, runs in times.items()}
    update = {name: statistics.median(total - part for total, part in runs) for name, runs in times.items()}

    def ratio(rate: float, to: str) -> str:
        return f"{rate / results[to]:.2f}x" if to in results else "-"

    backend = f" ({config.env.options['backend']} backend)" if "backend" in config.env.options else ""
    lines = [
        f"{config.env.id}, {config.env.n_envs} envs{backend}, n_steps "
        f"{config.ppo.n_steps}, {config.ppo.n_epochs} epochs, batch {config.ppo.batch_size}, critic "
        f"{config.policy_kwargs.critic_core}; torch {torch.__version__} on {args.device} ({platform.machine()}, "
        f"{torch.get_num_threads()} threads); median of {args.iterations} timed iterations per agent, agents "
        "taking turns, after one warm-up. The RIMs policy is the config's core.",
        "",
        "| agent | env steps/s | vs stock CnnLstmPolicy | vs feed-forward PPO | iteration vs RIMs one row "
        "| collect s | update s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rate in results.items():
        lines.append(
            f"| {name} | {rate:.0f} | {ratio(rate, STOCK)} | {ratio(rate, FEED_FORWARD)} "
            f"| {results[ONE_ROW] / rate:.2f}x | {collect[name]:.2f} | {update[name]:.2f} |"
        )
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
