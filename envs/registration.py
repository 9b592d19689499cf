"""The environment ids rims-rl registers with gymnasium: ``import rims_rl.envs`` registers them all.

Gymnasium 1.x has no plugin entry points; a package registers its ids when imported (as ale-py does), and
``gym.make("rims_rl.envs:RimsRL/Pickup-Train-v0")`` imports this package first. Entry points are strings,
so registering imports nothing heavy: MiniGrid loads when an env is made.
"""

from __future__ import annotations

import gymnasium as gym

__all__ = [
    "CARTPOLE_NO_VELOCITY_ID",
    "CHEETAH_PIXELS_ID",
    "EVAL_SPLITS",
    "PICKUP_ID",
    "PICKUP_IDS",
    "PICKUP_PREFIX",
    "REPEAT_CARD_ID",
    "SPLITS",
    "ids",
    "is_pickup_id",
    "register",
]

# Our MiniGrid pickup task (rims_rl.envs.minigrid): distractors drawn per split.
SPLITS = ("train", "known", "novel", "crowded")
EVAL_SPLITS = SPLITS[1:]  # the splits a trained run is evaluated on
PICKUP_PREFIX = "RimsRL/Pickup"
PICKUP_ID = f"{PICKUP_PREFIX}-v0"  # the split as a keyword (train by default)
PICKUP_IDS = {f"{PICKUP_PREFIX}-{split.capitalize()}-v0": split for split in SPLITS}  # one id per split
_ENTRY = "rims_rl.envs.minigrid:make_pickup_env"
# CartPole without velocities (rims_rl.envs.classic): the memory task of `make demo`.
CARTPOLE_NO_VELOCITY_ID = "RimsRL/CartPoleNoVel-v1"
# Name the card shown 4 steps ago (rims_rl.envs.classic.RepeatCard): remembering a specific past input.
REPEAT_CARD_ID = "RimsRL/RepeatCard-v0"
# HalfCheetah-v5 seen through stacked rendered frames (rims_rl.envs.mujoco), the imitation task's env.
CHEETAH_PIXELS_ID = "RimsRL/HalfCheetahPixels-v0"


def is_pickup_id(env_id: str) -> bool:
    """True for the ids of our MiniGrid pickup task (``RimsRL/Pickup-v0`` and one per split)."""
    return env_id.startswith(PICKUP_PREFIX)


def ids() -> tuple[str, ...]:
    """Every id this package registers."""
    return (PICKUP_ID, *PICKUP_IDS, CARTPOLE_NO_VELOCITY_ID, REPEAT_CARD_ID, CHEETAH_PIXELS_ID)


def register() -> None:
    """Register every id of ours (idempotent)."""
    entries = {
        PICKUP_ID: {"entry_point": _ENTRY},
        **{env_id: {"entry_point": _ENTRY, "kwargs": {"split": split}} for env_id, split in PICKUP_IDS.items()},
        CARTPOLE_NO_VELOCITY_ID: {
            "entry_point": "rims_rl.envs.classic:make_cartpole_no_velocity",
            "max_episode_steps": 500,
            "reward_threshold": 475.0,
        },
        REPEAT_CARD_ID: {"entry_point": "rims_rl.envs.classic:RepeatCard"},
        # gym.make's own max_episode_steps (default 1000, HalfCheetah's) goes around make_cheetah's limit.
        CHEETAH_PIXELS_ID: {"entry_point": "rims_rl.envs.mujoco:make_cheetah", "max_episode_steps": 1000},
    }
    for env_id, entry in entries.items():
        if env_id not in gym.registry:
            gym.register(env_id, **entry)


register()
