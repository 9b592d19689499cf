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
    "HOLD_CUE_DISTRACT_ID",
    "HOLD_CUE_ID",
    "HOLD_CUE_LONG_ID",
    "MEMORY_SUITE",
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
_HOLD = "rims_rl.envs.classic:HoldCue"
# Hold a cue across a span and name it at the end (rims_rl.envs.classic.HoldCue): one input kept long.
HOLD_CUE_ID = "RimsRL/HoldCue-v0"  # 8 blank steps between the cue and the recall
HOLD_CUE_LONG_ID = "RimsRL/HoldCueLong-v0"  # 32 blank steps: 4x longer
HOLD_CUE_DISTRACT_ID = "RimsRL/HoldCueDistract-v0"  # 8 steps of random cards the agent must ignore
# The memory suite (issue 28): dense recall, a long hold at two lengths, a hold through distractors,
# and CartPole without velocities; each with its score by guessing and its best score.
MEMORY_SUITE = {
    "RimsRL/RepeatCard-v0": {"kind": "dense recall", "random": -0.5, "perfect": 1.0},
    HOLD_CUE_ID: {"kind": "long hold", "random": -0.5, "perfect": 1.0},
    HOLD_CUE_LONG_ID: {"kind": "long hold, 4x longer", "random": -0.5, "perfect": 1.0},
    HOLD_CUE_DISTRACT_ID: {"kind": "hold through distractors", "random": -0.5, "perfect": 1.0},
    "RimsRL/CartPoleNoVel-v1": {"kind": "inferring hidden state", "random": 22.0, "perfect": 500.0},
}
# HalfCheetah-v5 seen through stacked rendered frames (rims_rl.envs.mujoco), the imitation task's env.
CHEETAH_PIXELS_ID = "RimsRL/HalfCheetahPixels-v0"


def is_pickup_id(env_id: str) -> bool:
    """True for the ids of our MiniGrid pickup task (``RimsRL/Pickup-v0`` and one per split)."""
    return env_id.startswith(PICKUP_PREFIX)


def ids() -> tuple[str, ...]:
    """Every id this package registers."""
    return (
        PICKUP_ID,
        *PICKUP_IDS,
        CARTPOLE_NO_VELOCITY_ID,
        REPEAT_CARD_ID,
        HOLD_CUE_ID,
        HOLD_CUE_LONG_ID,
        HOLD_CUE_DISTRACT_ID,
        CHEETAH_PIXELS_ID,
    )


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
        HOLD_CUE_ID: {"entry_point": _HOLD, "kwargs": {"hold": 8}},
        HOLD_CUE_LONG_ID: {"entry_point": _HOLD, "kwargs": {"hold": 32}},
        HOLD_CUE_DISTRACT_ID: {"entry_point": _HOLD, "kwargs": {"hold": 8, "distractors": True}},
        # gym.make's own max_episode_steps (default 1000, HalfCheetah's) goes around make_cheetah's limit.
        CHEETAH_PIXELS_ID: {"entry_point": "rims_rl.envs.mujoco:make_cheetah", "max_episode_steps": 1000},
    }
    for env_id, entry in entries.items():
        if env_id not in gym.registry:
            gym.register(env_id, **entry)


register()
