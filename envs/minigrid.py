"""MiniGrid object picking among distractors, with a held-out set of *novel* distractors.

The task of the RIMs paper (Sec. 4.2.2, Fig. 5): the mission names one object (colour and type);
the agent sees a 7x7 egocentric window and must pick that object up among distractors. Distractors
come from a pool per *split*: ``train`` draws from pool A; ``known`` is the same at evaluation;
``novel`` adds more distractors from pool B, (type, colour) pairs that never appear in a training
episode, neither as distractor nor as target.

Defaults (targets, pools, counts, room size, ...) live in ``configs/minigrid/pickup.yaml`` under
``env:``, the one place they are written; the registered ids read them from there:

- ``RimsRL/Pickup-v0`` (``split`` as a keyword, ``train`` by default),
- ``RimsRL/Pickup-Train-v0``, ``RimsRL/Pickup-Known-v0``, ``RimsRL/Pickup-Novel-v0``.

Every MiniGrid / BabyAI env, ours and the standard ones, goes through :class:`MissionIds`: the
observation becomes ``{"image": (7, 7, 3) uint8 cell codes, "mission": (L,) word ids}``, which SB3
accepts (its checker rejects the raw string mission).

Gymnasium and minigrid only: nothing here knows about SB3 policies.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from gymnasium import spaces
from minigrid.core.constants import COLOR_NAMES, OBJECT_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Ball, Box, Key
from minigrid.minigrid_env import MiniGridEnv

from rims_rl.envs.registration import PICKUP_ID, SPLITS

__all__ = [
    "OBJECT_TYPES",
    "SPLITS",
    "VOCABULARY",
    "DistractorGroup",
    "MissionIds",
    "PickupDistractorsEnv",
    "make_pickup_env",
    "pickup_defaults",
]

OBJECT_TYPES = {"key": Key, "ball": Ball, "box": Box}
# The env settings of our task (besides the generic `id`, `n_envs`, `mission_length`).
PICKUP_KEYS = ("split", "size", "max_steps", "end_on_wrong_pickup", "targets", "pools", "splits")

# Words of MiniGrid's and BabyAI's missions; id 0 pads, id 1 stands for any other word.
VOCABULARY = (
    "<pad>",
    "<unk>",
    "pick",
    "up",
    "the",
    "a",
    "an",
    "go",
    "to",
    "get",
    "fetch",
    "you",
    "must",
    "find",
    "open",
    "put",
    "next",
    "traverse",
    "rooms",
    "goal",
    "reach",
    "use",
    "key",
    "ball",
    "box",
    "door",
    "red",
    "green",
    "blue",
    "purple",
    "yellow",
    "grey",
    "and",
    "then",
    "after",
    "of",
    "on",
    "your",
    "left",
    "right",
    "in",
    "front",
    "behind",
    "object",
)
_WORD_IDS = {word: index for index, word in enumerate(VOCABULARY)}

Pair = tuple[str, str]  # (type, colour)


@dataclass(frozen=True)
class DistractorGroup:
    """Draw ``count`` (an inclusive range, drawn uniformly) distractors from ``pool``, with repetition,
    never the target's own (type, colour)."""

    pool: tuple[Pair, ...]
    count: tuple[int, int]


def _pair(item: Any, where: str) -> Pair:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise ValueError(f"{where}: expected a [type, colour] pair, got {item!r}")
    kind, colour = item
    if kind not in OBJECT_TYPES:
        raise ValueError(f"{where}: object type must be one of {', '.join(OBJECT_TYPES)}, got {kind!r}")
    if colour not in COLOR_NAMES:
        raise ValueError(f"{where}: colour must be one of {', '.join(COLOR_NAMES)}, got {colour!r}")
    return kind, colour


def _groups(split: str, spec: Any, pools: Mapping[str, Sequence[Pair]]) -> tuple[DistractorGroup, ...]:
    if not isinstance(spec, list):
        raise ValueError(f"splits.{split} must be a list of {{pool, count}} groups, got {spec!r}")
    groups = []
    for index, group in enumerate(spec):
        where = f"splits.{split}[{index}]"
        if not isinstance(group, Mapping) or set(group) != {"pool", "count"}:
            raise ValueError(f"{where} must have exactly the keys pool and count, got {group!r}")
        if group["pool"] not in pools:
            raise ValueError(f"{where}: unknown pool {group['pool']!r}; pools: {', '.join(pools)}")
        count = group["count"]
        if (
            not isinstance(count, (list, tuple))
            or len(count) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in count)
            or not 0 <= count[0] <= count[1]
        ):
            raise ValueError(f"{where}: count must be [low, high] with 0 <= low <= high, got {count!r}")
        groups.append(DistractorGroup(tuple(pools[group["pool"]]), (count[0], count[1])))
    return tuple(groups)


class PickupDistractorsEnv(MiniGridEnv):
    """Pick up the object the mission names, among distractors drawn per split.

    One room of ``size`` x ``size`` cells (walls included). Reward on picking up the target:
    MiniGrid's ``1 - 0.9 * step_count / max_steps``. Picking up anything else ends the episode with
    reward 0 when ``end_on_wrong_pickup``; otherwise the agent carries it and may drop it (the action
    set then includes ``drop``). Actions: left, right, forward, pickup (, drop).

    Args:
        targets: the (type, colour) pairs a mission may name.
        distractors: the groups to draw distractors from (see :class:`DistractorGroup`).
        size: room side in cells, walls included.
        max_steps: episode step limit (truncation).
        end_on_wrong_pickup: see above.
        **kwargs: ``MiniGridEnv``'s (``render_mode``, ``agent_view_size``, ...).
    """

    def __init__(
        self,
        targets: Sequence[Pair],
        distractors: Sequence[DistractorGroup],
        size: int,
        max_steps: int,
        end_on_wrong_pickup: bool = True,
        **kwargs: Any,
    ) -> None:
        self.targets = tuple(_pair(t, "targets") for t in targets)
        if not self.targets:
            raise ValueError("targets must name at least one [type, colour] pair")
        self.distractor_groups = tuple(distractors)
        for group in self.distractor_groups:
            for target in self.targets:
                if group.count[1] > 0 and not [p for p in group.pool if p != target]:
                    raise ValueError(f"a distractor pool {list(group.pool)} has nothing but the target {target}")
        capacity = (size - 2) ** 2 - 1  # free cells, one for the agent
        most = 1 + sum(group.count[1] for group in self.distractor_groups)
        if most > capacity:
            raise ValueError(f"up to {most} objects do not fit a room of size {size} ({capacity} free cells)")
        self.end_on_wrong_pickup = bool(end_on_wrong_pickup)
        colours = sorted({colour for _, colour in self.targets})
        kinds = sorted({kind for kind, _ in self.targets})
        mission_space = MissionSpace(
            mission_func=lambda colour, kind: f"pick up the {colour} {kind}",
            ordered_placeholders=[colours, kinds],
        )
        super().__init__(
            mission_space=mission_space,
            width=size,
            height=size,
            max_steps=max_steps,
            see_through_walls=True,
            **kwargs,
        )
        self.action_space = spaces.Discrete(4 if self.end_on_wrong_pickup else 5)
        self.target: Pair | None = None
        self.distractors: list[Pair] = []

    def _gen_grid(self, width: int, height: int) -> None:
        self.grid = Grid(width, height)
        self.grid.wall_rect(0, 0, width, height)
        self.target = self.targets[self._rand_int(0, len(self.targets))]
        self.distractors = []
        for group in self.distractor_groups:
            pool = [pair for pair in group.pool if pair != self.target]
            for _ in range(self._rand_int(group.count[0], group.count[1] + 1)):
                self.distractors.append(pool[self._rand_int(0, len(pool))])
        for kind, colour in [self.target, *self.distractors]:
            self.place_obj(OBJECT_TYPES[kind](colour))
        self.place_agent()
        self.mission = f"pick up the {self.target[1]} {self.target[0]}"

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.carrying is not None:
            if (self.carrying.type, self.carrying.color) == self.target:
                reward, terminated = self._reward(), True
                info["success"] = True
            elif self.end_on_wrong_pickup:
                reward, terminated = 0.0, True
                info["success"] = False
        if (terminated or truncated) and "success" not in info:
            info["success"] = False
        return obs, reward, terminated, truncated, info


class MissionIds(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MiniGrid's observation as ``{"image", "mission"}`` arrays SB3 takes.

    ``image``: MiniGrid's (view, view, 3) cell codes (object, colour, state), flattened in row-major
    order (``MiniGridExtractor`` restores the grid): SB3 treats any 3-D array as pixels (scaling by
    1/255, checker warnings), and these are category codes.
    ``mission``: the first ``mission_length`` words as ids in :data:`VOCABULARY`, 0-padded.
    """

    def __init__(self, env: gym.Env, mission_length: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, mission_length=mission_length)
        gym.ObservationWrapper.__init__(self, env)
        if isinstance(mission_length, bool) or not isinstance(mission_length, int) or mission_length < 1:
            raise ValueError(f"mission_length must be a positive integer, got {mission_length!r}")
        self.mission_length = mission_length
        view = env.observation_space["image"].shape
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, max(OBJECT_TO_IDX.values()), (int(np.prod(view)),), np.uint8),
                "mission": spaces.Box(0, len(VOCABULARY) - 1, (mission_length,), np.int64),
            }
        )

    def observation(self, observation: dict) -> dict:
        return {
            "image": observation["image"].reshape(-1),
            "mission": encode_mission(observation["mission"], self.mission_length),
        }


def encode_mission(mission: str, length: int) -> np.ndarray:
    """Word ids of ``mission`` (lower case, punctuation dropped), truncated or 0-padded to ``length``."""
    words = re.findall(r"[a-z]+", mission.lower())[:length]
    ids = np.zeros(length, dtype=np.int64)
    ids[: len(words)] = [_WORD_IDS.get(word, 1) for word in words]
    return ids


# ------------------------------------------------------------------------ defaults and registry


@functools.cache
def pickup_defaults() -> dict[str, Any]:
    """The ``env:`` section of the packaged ``configs/minigrid/pickup.yaml`` (our task's defaults)."""
    from importlib import resources

    text = resources.files("rims_rl.configs").joinpath("minigrid/pickup.yaml").read_text()
    return yaml.safe_load(text)["env"]


def check_pickup_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Our task's settings over its defaults, checked; raises ``ValueError`` naming the bad key."""
    unknown = sorted(set(settings) - set(PICKUP_KEYS))
    if unknown:
        raise ValueError(f"unknown settings {', '.join(unknown)} for {PICKUP_ID}; known: {', '.join(PICKUP_KEYS)}")
    merged = {key: pickup_defaults()[key] for key in PICKUP_KEYS} | dict(settings)
    if merged["split"] not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {merged['split']!r}")
    for key, least, what in (
        ("size", 5, "the room's side, walls included"),
        ("max_steps", 1, "an episode's step limit"),
    ):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{key} must be an integer of at least {least} ({what}), got {value!r}")
    if not isinstance(merged["end_on_wrong_pickup"], bool):
        raise ValueError(f"end_on_wrong_pickup must be true or false, got {merged['end_on_wrong_pickup']!r}")
    pools = merged["pools"]
    if not isinstance(pools, Mapping) or not pools:
        raise ValueError("pools must map pool names to lists of [type, colour] pairs")
    merged["pools"] = {name: [_pair(p, f"pools.{name}") for p in pairs] for name, pairs in pools.items()}
    merged["targets"] = [_pair(t, "targets") for t in merged["targets"]]
    splits = merged["splits"]
    if not isinstance(splits, Mapping) or set(splits) != set(SPLITS):
        raise ValueError(f"splits must define exactly {', '.join(SPLITS)}")
    merged["splits"] = {name: _groups(name, splits[name], merged["pools"]) for name in SPLITS}
    return merged


def make_pickup_env(split: str | None = None, render_mode: str | None = None, **settings: Any) -> gym.Env:
    """Our task for one split, with the defaults of ``configs/minigrid/pickup.yaml`` for anything not given."""
    if split is not None:
        settings["split"] = split
    merged = check_pickup_settings(settings)
    return PickupDistractorsEnv(
        targets=merged["targets"],
        distractors=merged["splits"][merged["split"]],
        size=merged["size"],
        max_steps=merged["max_steps"],
        end_on_wrong_pickup=merged["end_on_wrong_pickup"],
        render_mode=render_mode,
    )
