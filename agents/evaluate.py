"""Evaluate a trained agent on full episodes (Atari: full games, unclipped score)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy

from rims_rl.agents.checkpointing import load_checkpoint, load_weights, policy_state
from rims_rl.agents.config import ConfigError, TrainConfig
from rims_rl.agents.runs import CHECKPOINT
from rims_rl.agents.stats import mean_ci, success_ci
from rims_rl.agents.train import build_model, run_config
from rims_rl.envs import EVAL_SPLITS, PICKUP_ID, env_kind, is_pickup_id, make_env
from rims_rl.utils import resolve_device

__all__ = [
    "evaluate_run",
    "find_run",
    "load_model",
    "load_run",
    "play_episode",
    "record_gif",
    "render_env",
    "with_distractors",
]


def find_run(target: str | Path) -> Path:
    """The run folder of a run folder, or of a file inside one (its checkpoint, its ``model.zip``)."""
    target = Path(target)
    if target.is_dir() and (target / "config.yaml").is_file():
        return target
    if not target.exists():
        raise ConfigError(f"no run folder or model file at {target}")
    for parent in target.parents:
        if (parent / "config.yaml").is_file():
            return parent
    raise ConfigError(f"{target} is not a run folder, nor inside one (no config.yaml)")


def load_model(run_dir: Path, config: TrainConfig, env, device: str, seed: int | None = None):
    """The run's algorithm, rebuilt from its config on ``env`` with the policy weights of its checkpoint, the
    environments then seeded with ``seed`` (building seeds them with the run's training seed). Reading the
    checkpoint runs no code from it (``model.zip`` is for SB3's own ``load``, and is not read)."""
    device = resolve_device(device)
    saved = load_checkpoint(run_dir / CHECKPOINT, "train", device)
    model = build_model(config, env, device)
    if seed is not None:
        model.get_env().seed(seed)  # applied at the next reset, as make_env(seed=...) does
    load_weights(
        model.policy, policy_state(saved), f"{run_dir / CHECKPOINT} does not fit the run's config.yaml (edited since?)"
    )
    return model


def with_distractors(config: TrainConfig, distractors: str) -> TrainConfig:
    """``config`` with its MiniGrid pickup task switched to an evaluation split (``known``, ``novel``,
    ``crowded``: :data:`rims_rl.envs.EVAL_SPLITS`)."""
    if distractors not in EVAL_SPLITS:
        raise ConfigError(f"--distractors must be one of {', '.join(EVAL_SPLITS)}, got {distractors!r}")
    if not is_pickup_id(config.env.id):
        raise ConfigError(f"--distractors needs a run on RimsRL/Pickup-*, this one is on {config.env.id}")
    env = dataclasses.replace(config.env, id=PICKUP_ID, options={**config.env.options, "split": distractors})
    return dataclasses.replace(config, env=env)


def load_run(target: str | Path) -> tuple[Path, TrainConfig]:
    """``(run folder, checked config)`` of a run folder or a file inside one."""
    run_dir = find_run(target)
    return run_dir, run_config(run_dir)


def evaluate_run(
    target: str | Path,
    episodes: int = 10,
    deterministic: bool = False,
    video: bool = False,
    seed: int = 12_345,
    distractors: str | None = None,
) -> dict[str, Any]:
    """Mean return and its 95% bootstrap CI over ``episodes`` full episodes; optional GIF of one.

    MiniGrid runs also get the success rate (a MiniGrid reward is positive only on success) with
    its CI; ``distractors`` (``known``, ``novel``, ``crowded``) evaluates a pickup run on that split.
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be positive, got {episodes}")
    run_dir, config = load_run(target)
    if distractors is not None:
        config = with_distractors(config, distractors)
    env = make_env(config.env.settings(), seed=seed, evaluation=True, n_envs=min(episodes, 8))
    try:
        model = load_model(run_dir, config, env, config.run.device, seed)
        returns, lengths = evaluate_policy(
            model, env, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True, warn=False
        )
    finally:
        env.close()
    returns = np.asarray(returns, dtype=np.float64)
    low, high = mean_ci(returns)
    result = {
        "run": str(run_dir),
        "env": config.env.id,
        "episodes": episodes,
        "deterministic": deterministic,
        "mean_return": float(returns.mean()),
        "ci95": [low, high],
        "std_return": float(returns.std()),
        "mean_length": float(np.mean(lengths)),
        "returns": returns.tolist(),
    }
    if distractors is not None:
        result["distractors"] = distractors
    if env_kind(config.env.id) == "minigrid":
        successes = int((returns > 0).sum())
        result["success_rate"] = successes / episodes
        result["success_ci95"] = list(success_ci(successes, episodes))  # Wilson
    if video:
        try:
            result["video"] = str(record_gif(model, config, run_dir / "videos" / "episode.gif", deterministic, seed))
        except gym.error.DependencyNotInstalled as error:
            raise ConfigError(f"--video: {error}") from None
    return result


def render_env(config: TrainConfig, seed: int):
    """A one-env evaluation VecEnv of ``config`` that renders RGB frames."""
    # Frames are drawn off screen: SDL (pygame's, for the classic-control envs) needs no display then, and
    # without this it prints "error: XDG_RUNTIME_DIR ..." on machines without a session. A user's choice stays.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env_config = dict(config.env.settings(), render_mode="rgb_array")
    if env_kind(env_config["id"]) == "atari":
        env_config["backend"] = "sb3"  # the C++ vector env does not render
    return make_env(env_config, seed=seed, evaluation=True, n_envs=1)


def play_episode(model, env, deterministic: bool, max_steps: int, on_step=None) -> dict[str, Any]:
    """Play one episode on a one-env VecEnv: its rendered frames, actions and rewards. ``on_step(obs,
    state, episode_start)``, when given, is called before each action and its results are returned as
    ``"per_step"``."""
    frames, actions, rewards, per_step = [], [], [], []
    obs, state, start = env.reset(), None, np.ones(1, dtype=bool)
    for _ in range(max_steps):
        frame = env.get_images()[0]
        if frame is not None:
            frames.append(np.asarray(frame))
        if on_step is not None:
            per_step.append(on_step(obs, state, start))
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=deterministic)
        obs, reward, done, _ = env.step(action)
        actions.append(int(np.asarray(action).reshape(-1)[0]))
        rewards.append(float(reward[0]))
        start = done
        if done[0]:
            break
    return {"frames": frames, "actions": actions, "rewards": rewards, "per_step": per_step}


def record_gif(model, config: TrainConfig, path: Path, deterministic: bool, seed: int, max_steps: int = 5000) -> Path:
    """Play one episode and save its frames as an animated GIF."""
    from PIL import Image

    env = render_env(config, seed)
    try:
        frames = play_episode(model, env, deterministic, max_steps)["frames"]
    finally:
        env.close()
    if not frames:
        raise ConfigError("the environment produced no frames to record")
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return path
