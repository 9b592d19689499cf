"""The environment ids rims-rl registers with gymnasium: ``import rims_rl.envs`` registers them all.

Gymnasium 1.x has no plugin entry points; a package registers its ids when imported (as ale-py does), and
``gym.make("rims_rl.envs:RimsRL/Pickup-Train-v0")`` imports this package first. Entry points are strings,
so registering imports nothing heavy: MiniGrid loads when an env is made.
"""

from __future__ import annotations

import gymnasium as gym

__all__ = ["PICKUP_ID", "PICKUP_IDS", "PICKUP_PREFIX", "SPLITS", "is_pickup_id", "register"]

# Our MiniGrid pickup task (rims_rl.envs.minigrid): distractors drawn per split.
SPLITS = ("train", "known", "novel")
PICKUP_PREFIX = "RimsRL/Pickup"
PICKUP_ID = f"{PICKUP_PREFIX}-v0"  # the split as a keyword (train by default)
PICKUP_IDS = {f"{PICKUP_PREFIX}-{split.capitalize()}-v0": split for split in SPLITS}  # one id per split
_ENTRY = "rims_rl.envs.minigrid:make_pickup_env"


def is_pickup_id(env_id: str) -> bool:
    """True for the ids of our MiniGrid pickup task (``RimsRL/Pickup-v0`` and one per split)."""
    return env_id.startswith(PICKUP_PREFIX)


def register() -> None:
    """Register every id of ours (idempotent)."""
    if PICKUP_ID not in gym.registry:
        gym.register(PICKUP_ID, entry_point=_ENTRY)
    for env_id, split in PICKUP_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=_ENTRY, kwargs={"split": split})


register()
