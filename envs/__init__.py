"""Environment builders and wrappers (gymnasium and SB3 vector envs). Installed as ``rims_rl.envs``."""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

__all__ = ["ATARI_ENV_KEYS", "env_kind", "env_name", "make_env"]

# The env config keys of each kind besides `id` and `n_envs`.
ATARI_ENV_KEYS = (
    "backend",
    "frame_stack",
    "noop_max",
    "sticky_actions",
    "episodic_life",
    "clip_rewards",
    "full_action_space",
    "max_episode_frames",
)


def env_kind(env_id: str) -> str:
    """``"gym"`` for an id registered with gymnasium, ``"atari"`` for an ALE game name in any form.

    Raises ``ValueError`` with the closest known ids for anything else.
    """
    from rims_rl.envs.atari import atari_game

    if env_id in gym.registry and not env_id.startswith("ALE/"):
        return "gym"
    try:
        atari_game(env_id)
        return "atari"
    except ValueError as atari_error:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        if close and "did you mean" not in str(atari_error):
            raise ValueError(f"unknown environment {env_id!r}; did you mean {', '.join(close)}?") from None
        raise ValueError(f"unknown environment {env_id!r}: not a gymnasium id, and {atari_error}") from None


def env_name(env_id: str) -> str:
    """A short name for run folders: "Pong" for any form of an Atari game, the id otherwise."""
    from rims_rl.envs.atari import atari_game

    return atari_game(env_id)[0] if env_kind(env_id) == "atari" else env_id


def make_env(config: dict[str, Any], seed: int, evaluation: bool = False, n_envs: int | None = None) -> VecEnv:
    """The vectorised environment an ``env:`` config section describes.

    ``evaluation=True`` scores full games: rewards unclipped and no episodic life.
    """
    settings = {key: value for key, value in config.items() if key not in ("id", "n_envs")}
    n_envs = n_envs or config["n_envs"]
    if env_kind(config["id"]) == "atari":
        from rims_rl.envs.atari import make_atari_env

        if evaluation:
            settings.update(clip_rewards=False, episodic_life=False)
        return make_atari_env(config["id"], n_envs, seed, **settings)
    render_mode = settings.pop("render_mode", None)
    if settings:
        raise ValueError(f"env settings {', '.join(sorted(settings))} apply to Atari games only")
    return make_vec_env(config["id"], n_envs=n_envs, seed=seed, env_kwargs={"render_mode": render_mode})
