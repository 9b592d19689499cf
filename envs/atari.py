"""Atari environments with standard preprocessing, as SB3 ``VecEnv`` s.

Preprocessing (both backends): no-op starts (up to ``noop_max`` random no-ops), fire on reset
where the game needs it, 4-frame skip with a max-pool over the last two frames, 84x84 greyscale,
a stack of the last ``frame_stack`` frames (channel-first, ``(frame_stack, 84, 84)`` uint8), reward
clipping to {-1, 0, 1}. Documented choices: sticky actions off by default (``sticky_actions`` sets
the repeat probability; ALE v5's own default is 0.25) and episodic life off by default (as in
rl-zoo's ppo_lstm Atari settings: a life loss is not an episode end).

Every step's ``infos[i]["episode"]`` reports the true full-game return (unclipped) and length
(agent steps) when a game ends, as SB3's ``Monitor`` does, so logging and evaluation see game
scores. A finished environment returns its reset observation and puts the last one in
``infos[i]["terminal_observation"]``; time-limit ends set ``infos[i]["TimeLimit.truncated"]``.

Backends:

- ``"ale"`` (default): ale-py's threaded C++ ``AtariVectorEnv`` behind a thin SB3 adapter.
- ``"sb3"``: gymnasium's ALE env with SB3's Atari wrappers in a ``DummyVecEnv``.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack, VecTransposeImage

from rims_rl.envs.games import ATARI_57, atari_game

__all__ = ["ATARI_57", "AleVecEnv", "atari_game", "make_atari_env"]

BACKENDS = ("ale", "sb3")


class AleVecEnv(VecEnv):
    """SB3 ``VecEnv`` over ale-py's C++ ``AtariVectorEnv`` (same-step autoreset).

    The C++ env does the preprocessing; this adapter clips rewards itself so that it can also
    report the unclipped game returns, and turns the env's arrays into SB3's per-env info dicts.
    """

    def __init__(
        self,
        rom_id: str,
        n_envs: int,
        frame_stack: int,
        noop_max: int,
        sticky_actions: float,
        clip_rewards: bool,
        full_action_space: bool,
        max_episode_frames: int,
        num_threads: int = 0,
    ) -> None:
        from ale_py.vector_env import AtariVectorEnv

        self.ale = AtariVectorEnv(
            game=rom_id,
            num_envs=n_envs,
            num_threads=num_threads,
            autoreset_mode="SameStep",
            stack_num=frame_stack,
            noop_max=noop_max,
            repeat_action_probability=sticky_actions,
            reward_clipping=False,
            episodic_life=False,
            full_action_space=full_action_space,
            max_num_frames_per_episode=max_episode_frames,
        )
        self.render_mode = None  # read by VecEnv.__init__; this env does not render
        super().__init__(n_envs, self.ale.single_observation_space, self.ale.single_action_space)
        self.clip_rewards = clip_rewards
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(n_envs, dtype=np.float64)
        self._lengths = np.zeros(n_envs, dtype=np.int64)
        self._started = time.time()

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, _ = self.ale.reset(seed=seed)
        self._reset_seeds()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.ale.step(self._actions)
        rewards = rewards.astype(np.float32)
        self._returns += rewards
        self._lengths += 1
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos[i]["episode"] = {
                "r": float(self._returns[i]),
                "l": int(self._lengths[i]),
                "t": round(time.time() - self._started, 6),
            }
            self._returns[i] = 0.0
            self._lengths[i] = 0
        if self.clip_rewards:
            rewards = np.sign(rewards)
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.ale.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        raise NotImplementedError(f"AleVecEnv runs one C++ vector env; {method_name} per env is not available")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))

    def get_images(self):
        raise NotImplementedError("AleVecEnv does not render; use backend='sb3' for videos")


def _sb3_env(
    game: str,
    rank: int,
    seed: int,
    noop_max: int,
    sticky_actions: float,
    episodic_life: bool,
    clip_rewards: bool,
    full_action_space: bool,
    max_episode_frames: int,
    render_mode: str | None,
):
    import ale_py
    from stable_baselines3.common.atari_wrappers import AtariWrapper, ClipRewardEnv, EpisodicLifeEnv
    from stable_baselines3.common.monitor import Monitor

    gym.register_envs(ale_py)

    def thunk() -> gym.Env:
        # frameskip=1: AtariWrapper skips frames itself (v5 would skip 4 more).
        env = gym.make(
            f"ALE/{game}-v5",
            frameskip=1,
            repeat_action_probability=sticky_actions,
            full_action_space=full_action_space,
            max_num_frames_per_episode=max_episode_frames,
            render_mode=render_mode,
        )
        env = AtariWrapper(env, noop_max=noop_max, terminal_on_life_loss=False, clip_reward=False)
        # Monitor sits after the frame skip and before life loss and clipping: full games, game score.
        env = Monitor(env)
        if episodic_life:
            env = EpisodicLifeEnv(env)
        if clip_rewards:
            env = ClipRewardEnv(env)
        env.action_space.seed(seed + rank)
        return env

    return thunk


def make_atari_env(
    game: str,
    n_envs: int = 8,
    seed: int = 0,
    *,
    backend: str = "ale",
    frame_stack: int = 4,
    noop_max: int = 30,
    sticky_actions: float = 0.0,
    episodic_life: bool = False,
    clip_rewards: bool = True,
    full_action_space: bool = False,
    max_episode_frames: int = 108_000,
    render_mode: str | None = None,
) -> VecEnv:
    """A vectorised Atari game with the standard preprocessing (see the module docstring).

    Args:
        game: any common form of the name ("Pong", "ALE/Pong-v5", "PongNoFrameskip-v4").
        n_envs: parallel environments.
        seed: seed of environment ``i`` is ``seed + i``.
        backend: ``"ale"`` (C++ vector env, fast) or ``"sb3"`` (SB3 wrappers; needed for
            ``episodic_life`` and rendering).
        frame_stack: frames per observation.
        noop_max: most random no-ops at reset (0: deterministic starts).
        sticky_actions: probability of repeating the previous action (0 off; ALE v5 uses 0.25).
        episodic_life: end an episode at each life loss (training signal only; the reported
            ``episode`` info is always the full game).
        clip_rewards: clip rewards to their sign; the reported game return is never clipped.
        full_action_space: the 18 actions of the console for every game (used by transfer).
        max_episode_frames: emulator frames before a time-limit truncation (30 min of play).
        render_mode: passed to gymnasium (``"rgb_array"`` for videos; sb3 backend).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
    if not 0.0 <= sticky_actions < 1.0:
        raise ValueError(f"sticky_actions must be in [0, 1), got {sticky_actions!r}")
    if not isinstance(frame_stack, int) or frame_stack < 1:
        raise ValueError(f"frame_stack must be a positive integer, got {frame_stack!r}")
    name, rom_id = atari_game(game)
    if backend == "ale" and (episodic_life or render_mode):
        raise ValueError("episodic_life and render_mode need backend='sb3'")
    if backend == "ale":
        env = AleVecEnv(
            rom_id, n_envs, frame_stack, noop_max, sticky_actions, clip_rewards, full_action_space, max_episode_frames
        )
        env.seed(seed)
        return env
    settings = (noop_max, sticky_actions, episodic_life, clip_rewards, full_action_space, max_episode_frames)
    env = DummyVecEnv([_sb3_env(name, rank, seed, *settings, render_mode) for rank in range(n_envs)])
    env.seed(seed)
    return VecTransposeImage(VecFrameStack(env, frame_stack))
