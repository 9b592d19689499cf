"""Small memory tasks: CartPole without velocities (the demo's task), card recall, and holding a cue.

CartPole without velocities: the agent sees the cart's position and the pole's angle but not their
velocities, so it must infer them from the observations it remembers: a feed-forward policy cannot
balance the pole, a recurrent one can. rl-zoo3 registers the same task as ``CartPoleNoVel-v1`` when it is
installed; ours is ``RimsRL/CartPoleNoVel-v1`` so that both can live in one registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

__all__ = ["HoldCue", "KeepObservations", "RepeatCard", "make_cartpole_no_velocity"]


class KeepObservations(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Keep only the entries ``keep`` of a 1-d ``Box`` observation, in that order."""

    def __init__(self, env: gym.Env, keep: Sequence[int]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, keep=list(keep))
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"KeepObservations needs a 1-d Box observation space, got {space}")
        self.keep = np.asarray(keep, dtype=np.int64)
        if self.keep.ndim != 1 or not len(self.keep) or not ((self.keep >= 0) & (self.keep < space.shape[0])).all():
            raise ValueError(f"keep must list indices in [0, {space.shape[0]}), got {list(keep)!r}")
        self.observation_space = gym.spaces.Box(space.low[self.keep], space.high[self.keep], dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.keep]


# CartPole's observation: cart position, cart velocity, pole angle, pole angular velocity.
POSITIONS = (0, 2)


def make_cartpole_no_velocity(**kwargs: Any) -> gym.Env:
    """CartPole-v1's dynamics (keyword arguments as ``CartPoleEnv``'s) observed without velocities."""
    return KeepObservations(CartPoleEnv(**kwargs), POSITIONS)


class RepeatCard(gym.Env):
    """A card memory task: each step shows one of ``cards`` cards (one-hot); from step ``delay`` on, the
    action must name the card shown ``delay`` steps earlier. Each such step scores ``+1`` if right and
    ``-1`` if wrong, divided by the number of scored steps, so an episode's return lies in [-1, 1]: 1 for
    perfect recall, ``(2 - cards) / cards`` in expectation by guessing (-0.5 with 4 cards). A policy must
    keep the last ``delay`` cards in order: what it needs is a specific past input, not a running summary.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, cards: int = 4, delay: int = 4, length: int = 24) -> None:
        for name, value, least in (("cards", cards, 2), ("delay", delay, 1), ("length", length, delay + 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")
        self.cards, self.delay, self.length = cards, delay, length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (cards,), np.float32)
        self.action_space = gym.spaces.Discrete(cards)
        self._shown: list[int] = []

    def _show(self) -> np.ndarray:
        card = int(self.np_random.integers(self.cards))
        self._shown.append(card)
        return np.eye(self.cards, dtype=np.float32)[card]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._shown = []
        return self._show(), {}

    def step(self, action):
        t = len(self._shown) - 1  # the step whose card the agent has just seen
        reward = 0.0
        if t >= self.delay:
            right = int(action) == self._shown[t - self.delay]
            reward = (1.0 if right else -1.0) / (self.length - self.delay)
        # The end is part of the task (the return is normalised by it): termination, not truncation, so
        # that PPO does not bootstrap a value past it.
        terminated = t + 1 >= self.length
        return self._show(), reward, terminated, False, {}


class HoldCue(gym.Env):
    """Hold one cue across a span: the first observation shows one of ``cards`` cards, the last asks for it.

    Step 0 shows the cue (one-hot card, cue flag on). ``hold`` steps follow: blank, or with ``distractors``
    each showing a random card with the cue flag off (cards the agent must not confuse with the cue). Then
    the recall step (recall flag on): the action taken there must name the cue, ``+1`` if right, ``-1`` if
    wrong, and the episode ends; no other action scores. Observation: the ``cards`` one-hot entries, then
    the cue flag and the recall flag. Return: 1 for perfect recall, ``(2 - cards) / cards`` in expectation
    by guessing (-0.5 with 4 cards). Unlike :class:`RepeatCard`, what must be kept is one input, over a
    long span in which nothing else matters.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, cards: int = 4, hold: int = 8, distractors: bool = False) -> None:
        for name, value, least in (("cards", cards, 2), ("hold", hold, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")
        if not isinstance(distractors, bool):
            raise ValueError(f"distractors must be true or false, got {distractors!r}")
        self.cards, self.hold, self.distractors = cards, hold, distractors
        self.observation_space = gym.spaces.Box(0.0, 1.0, (cards + 2,), np.float32)
        self.action_space = gym.spaces.Discrete(cards)
        self._cue = 0
        self._t = 0

    def _observation(self, card: int | None, cue: bool = False, recall: bool = False) -> np.ndarray:
        observation = np.zeros(self.cards + 2, dtype=np.float32)
        if card is not None:
            observation[card] = 1.0
        observation[self.cards], observation[self.cards + 1] = float(cue), float(recall)
        return observation

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(self.cards)), 0
        return self._observation(self._cue, cue=True), {}

    def step(self, action):
        if self._t > self.hold:  # the action answers the recall step
            right = int(action) == self._cue
            return self._observation(None), 1.0 if right else -1.0, True, False, {"recalled": right}
        self._t += 1
        if self._t > self.hold:
            return self._observation(None, recall=True), 0.0, False, False, {}
        card = int(self.np_random.integers(self.cards)) if self.distractors else None
        return self._observation(card), 0.0, False, False, {}
