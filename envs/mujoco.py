"""HalfCheetah from pixels (partially observable: no velocities) and joint noise for evaluation.

The paper's imitation setting (App. C.7): the agent sees rendered frames, the past 4 concatenated; at
evaluation, noise perturbs the joints every step. Gymnasium and MuJoCo only.

Rendering is offscreen: ``MUJOCO_GL`` defaults to ``egl`` (set before MuJoCo loads; ``osmesa`` also works
on a CPU). Multisampling, shadows and reflections are off: about 25x faster at 64x64, and irrelevant to
a 64x64 policy input.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["JointNoise", "PixelObservation", "make_cheetah", "render_frame", "set_gl_backend"]

ENV_ID = "HalfCheetah-v5"
# HalfCheetah's qpos / qvel: the root (x, z, pitch) first, then the six actuated joints.
_ACTUATED = slice(3, None)


def set_gl_backend(gl: str) -> None:
    """Choose MuJoCo's offscreen GL backend (egl, osmesa, glfw); must happen before MuJoCo renders."""
    if gl not in ("egl", "osmesa", "glfw"):
        raise ValueError(f"gl must be egl, osmesa or glfw, got {gl!r}")
    current = os.environ.get("MUJOCO_GL")
    if current is not None and current != gl and "mujoco.gl_context" in __import__("sys").modules:
        raise ValueError(f"MuJoCo already renders with MUJOCO_GL={current}; cannot switch to {gl} in this process")
    os.environ["MUJOCO_GL"] = gl


class JointNoise(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """After every step, add Gaussian noise (std ``std``) to the actuated joints' positions and
    velocities, and return the observation of the perturbed state. Works under :class:`PixelObservation`
    too (wrap the state env first: the frame is rendered after the perturbation). ``std=0`` leaves the
    environment untouched. The noise generator is seeded by ``reset(seed=...)``.
    """

    def __init__(self, env: gym.Env, std: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, std=std)
        gym.Wrapper.__init__(self, env)
        if isinstance(std, bool) or not isinstance(std, (int, float)) or std < 0:
            raise ValueError(f"joint noise std must be a non-negative number, got {std!r}")
        self.std = float(std)
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng([seed, 7919])
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.std > 0:
            base = self.env.unwrapped
            qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
            qpos[_ACTUATED] += self._rng.normal(0.0, self.std, qpos[_ACTUATED].shape)
            qvel[_ACTUATED] += self._rng.normal(0.0, self.std, qvel[_ACTUATED].shape)
            base.set_state(qpos, qvel)
            obs = base._get_obs()
        return obs, reward, terminated, truncated, info


def render_frame(env: gym.Env) -> np.ndarray:
    """The current frame of a MuJoCo env made with ``render_mode="rgb_array"``: ``(3, H, W)`` uint8,
    rendered without multisampling, shadows or reflections."""
    base = env.unwrapped
    renderer = base.mujoco_renderer
    if not getattr(base, "_rims_fast_render", False):
        import mujoco

        base.model.vis.quality.offsamples = 0  # read when the GL context is built, by the first render
        viewer = renderer._get_viewer("rgb_array")
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        base._rims_fast_render = True
    return np.ascontiguousarray(renderer.render("rgb_array").transpose(2, 0, 1))


class PixelObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The rendered frame as the observation: ``(3, size, size)`` uint8, channel first."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        if env.render_mode != "rgb_array":
            raise ValueError(f"PixelObservation needs render_mode='rgb_array', got {env.render_mode!r}")
        # The frames come from rgb_array rendering, so that is the only mode this env can be made with.
        self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
        height, width = env.unwrapped.height, env.unwrapped.width
        self.observation_space = spaces.Box(0, 255, (3, height, width), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return render_frame(self.env)


def make_cheetah(
    pixels: bool = True,
    size: int = 64,
    frame_stack: int = 4,
    camera: str = "track",
    joint_noise: float = 0.0,
    gl: str = "egl",
    max_episode_steps: int = 1000,
    render_mode: str | None = None,
    **kwargs: Any,
) -> gym.Env:
    """HalfCheetah-v5, from pixels (the last ``frame_stack`` frames, ``(frame_stack * 3, size, size)``)
    or from its state vector, with optional joint noise.

    The pixel env always renders ``rgb_array`` frames (its observations are made of them), so its
    ``render_mode`` may only be ``None`` or ``"rgb_array"``; the state env passes ``render_mode`` on.
    """
    if render_mode not in (None, "rgb_array") and pixels:
        raise ValueError(f"render_mode must be None or 'rgb_array' for the pixel env, got {render_mode!r}")
    for name, value in (("size", size), ("frame_stack", frame_stack), ("max_episode_steps", max_episode_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    set_gl_backend(gl)
    env = gym.make(
        ENV_ID,
        render_mode="rgb_array" if pixels else render_mode,
        width=size,
        height=size,
        camera_name=camera,
        max_episode_steps=max_episode_steps,
        **kwargs,
    )
    env = JointNoise(env, joint_noise)
    if pixels:
        env = PixelObservation(env)
        env = gym.wrappers.FrameStackObservation(env, frame_stack)
        env = gym.wrappers.ReshapeObservation(env, (frame_stack * 3, size, size))
    return env
