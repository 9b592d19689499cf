"""Environment builders and wrappers (gymnasium and SB3 vector envs). Installed as ``rims_rl.envs``.

Importing this package registers our environment ids with gymnasium (:mod:`rims_rl.envs.registration`):
``gym.register_envs(rims_rl.envs)`` then ``gym.make("RimsRL/Pickup-Train-v0")``. It imports no SB3 and no
torch itself; :func:`make_env` loads them when it builds a vectorised environment.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

import gymnasium as gym

from rims_rl.envs.registration import EVAL_SPLITS, PICKUP_ID, PICKUP_PREFIX, is_pickup_id

__all__ = [
    "ATARI_ENV_KEYS",
    "EVAL_SPLITS",
    "PICKUP_ID",
    "check_env_settings",
    "env_kind",
    "env_name",
    "env_setting_keys",
    "is_pickup_id",
    "make_env",
]

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
# MiniGrid / BabyAI ids, ours included.
MINIGRID_PREFIXES = (PICKUP_PREFIX, "MiniGrid-", "BabyAI-")
MINIGRID_ENV_KEYS = ("mission_length",)


def env_kind(env_id: str) -> str:
    """``"minigrid"`` for MiniGrid / BabyAI ids (ours included), ``"gym"`` for any other id registered
    with gymnasium, ``"atari"`` for an ALE game name in any form.

    Raises ``ValueError`` with the closest known ids for anything else.
    """
    from rims_rl.envs.games import atari_game

    if env_id.startswith(MINIGRID_PREFIXES):
        import minigrid  # noqa: F401  (registers MiniGrid's and BabyAI's ids)

        if env_id in gym.registry:
            return "minigrid"
    # ale-py registers "ALE/Pong-v5" and "PongNoFrameskip-v4" style ids once imported: still Atari games.
    if env_id in gym.registry and "ale_py" not in str(gym.registry[env_id].entry_point):
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
    """A short name for run folders: "Pong" for any form of an Atari game, the id (``/`` as ``-``) otherwise."""
    from rims_rl.envs.games import atari_game

    return atari_game(env_id)[0] if env_kind(env_id) == "atari" else env_id.replace("/", "-")


def env_setting_keys(env_id: str) -> tuple[str, ...]:
    """The keys an ``env:`` config section may hold for this environment besides ``id`` and ``n_envs``."""
    kind = env_kind(env_id)
    if kind == "atari":
        return ATARI_ENV_KEYS
    if kind == "minigrid":
        from rims_rl.envs.minigrid import PICKUP_KEYS

        return MINIGRID_ENV_KEYS + (PICKUP_KEYS if is_pickup_id(env_id) else ())
    return ()


def check_env_settings(config: dict[str, Any]) -> None:
    """Raise ``ValueError`` for an ``env:`` section that cannot build its environment (before building it)."""
    allowed = env_setting_keys(config["id"])
    extra = sorted(set(config) - {"id", "n_envs", "render_mode", *allowed})
    if extra:
        kind = env_kind(config["id"])
        hint = ""
        if kind == "minigrid" and set(extra) & {"split", "targets", "pools", "splits"}:
            hint = " (those settings belong to RimsRL/Pickup ids; standard ones: configs/minigrid/babyai.yaml)"
        raise ValueError(f"unknown config keys env.{', env.'.join(extra)} for a {kind} environment{hint}")
    if env_kind(config["id"]) == "minigrid" and "mission_length" not in config:
        raise ValueError("a MiniGrid environment needs env.mission_length (words of the mission the agent reads)")
    if is_pickup_id(config["id"]):
        from rims_rl.envs.minigrid import PICKUP_KEYS, check_pickup_settings

        settings = {key: config[key] for key in PICKUP_KEYS if key in config}
        if config["id"] != PICKUP_ID and "split" in settings:
            raise ValueError(f"{config['id']} fixes its split; use {PICKUP_ID} with env.split instead")
        check_pickup_settings(settings)


def make_env(config: dict[str, Any], seed: int, evaluation: bool = False, n_envs: int | None = None):
    """The vectorised environment (an SB3 ``VecEnv``) an ``env:`` config section describes.

    ``evaluation=True`` scores full games: rewards unclipped and no episodic life.
    """
    from stable_baselines3.common.env_util import make_vec_env

    settings = {key: value for key, value in config.items() if key not in ("id", "n_envs")}
    n_envs = n_envs or config["n_envs"]
    if env_kind(config["id"]) == "atari":
        from rims_rl.envs.atari import make_atari_env

        if evaluation:
            settings.update(clip_rewards=False, episodic_life=False)
        return make_atari_env(config["id"], n_envs, seed, **settings)
    check_env_settings(config)
    render_mode = settings.pop("render_mode", None)
    if env_kind(config["id"]) == "minigrid":
        from rims_rl.envs.minigrid import MissionIds

        mission_length = settings.pop("mission_length")
        return make_vec_env(
            config["id"],
            n_envs=n_envs,
            seed=seed,
            env_kwargs={"render_mode": render_mode, **settings},
            wrapper_class=MissionIds,
            wrapper_kwargs={"mission_length": mission_length},
        )
    if settings:
        raise ValueError(f"env settings {', '.join(sorted(settings))} apply to Atari games only")
    if render_mode is None:
        # Made by a function, so that SB3 does not ask for rgb_array frames (its default for an id): envs that
        # draw nothing (ours among them) take no render_mode, and no one looks at training frames.
        return make_vec_env(functools.partial(gym.make, config["id"]), n_envs=n_envs, seed=seed)
    return make_vec_env(config["id"], n_envs=n_envs, seed=seed, env_kwargs={"render_mode": render_mode})
