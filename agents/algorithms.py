"""sb3-contrib's RecurrentPPO with our policies, and recurrent A2C as a RecurrentPPO configuration."""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecNormalize

from rims_rl.agents.checkpointing import rng_state, set_rng_state
from rims_rl.policies import (
    PADDING_START,
    LstmCnnPolicy,
    LstmMultiInputPolicy,
    LstmPolicy,
    RecurrentCorePolicy,
    RimsCnnPolicy,
    RimsMultiInputPolicy,
    RimsPolicy,
)

__all__ = ["RecurrentA2C", "RimsPPO", "algorithm_state", "restore_algorithm", "set_normalizer"]


class _InOrder(BaseBuffer):
    """Serve a single full batch in buffer order: the parent rotates the buffer at a random point,
    which would cut one environment's sequence (and its BPTT) in two."""

    def _get_samples(self, batch_inds: np.ndarray, env_change: np.ndarray, env=None):
        if len(batch_inds) == self.buffer_size * self.n_envs:
            batch_inds = np.sort(batch_inds)
        return super()._get_samples(batch_inds, env_change, env)


class _Unpadded(BaseBuffer):
    """Minibatches with the real observations only, in order, and padding slots marked by an
    episode start of ``PADDING_START``: our policies run the features extractor on these alone and
    place the features in the padded grid (``RecurrentCorePolicy._padded_features``)."""

    def _get_samples(self, batch_inds: np.ndarray, env_change: np.ndarray, env=None):
        # The parent would also gather and pad the observations (on Atari most of its time), which
        # this minibatch replaces: it gets an empty stand-in to pad instead.
        observations, obs_shape = self.observations, self.obs_shape
        self.observations, self.obs_shape = np.empty((len(observations), 0), observations.dtype), (0,)
        try:
            samples = super()._get_samples(batch_inds, env_change, env)
        finally:
            self.observations, self.obs_shape = observations, obs_shape
        return samples._replace(
            observations=self.to_torch(observations[batch_inds]),
            episode_starts=self.pad_and_flatten(self.episode_starts[batch_inds], padding_value=PADDING_START),
        )


class _UnpaddedBuffer(_Unpadded, RecurrentRolloutBuffer):
    pass


class _InOrderBuffer(_InOrder, RecurrentRolloutBuffer):
    pass


class _InOrderUnpaddedBuffer(_InOrder, _Unpadded, RecurrentRolloutBuffer):
    pass


class _InOrderDictBuffer(_InOrder, RecurrentDictRolloutBuffer):
    pass


class RimsPPO(RecurrentPPO):
    """``RecurrentPPO`` that also knows our policies by name: ``RimsPPO("RimsCnnPolicy", env)``.

    Aliases: ``RimsPolicy``, ``RimsCnnPolicy``, ``RimsMultiInputPolicy`` and the same-structure LSTM
    baselines ``LstmPolicy``, ``LstmCnnPolicy``, ``LstmMultiInputPolicy``, besides sb3-contrib's own.
    With our policies and array observations, minibatches skip the features extractor on sequence
    padding (same losses, less work).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **RecurrentPPO.policy_aliases,
        "RimsPolicy": RimsPolicy,
        "RimsCnnPolicy": RimsCnnPolicy,
        "RimsMultiInputPolicy": RimsMultiInputPolicy,
        "LstmPolicy": LstmPolicy,
        "LstmCnnPolicy": LstmCnnPolicy,
        "LstmMultiInputPolicy": LstmMultiInputPolicy,
    }
    _in_order = False  # serve a full batch in buffer order (A2C)

    def _setup_model(self) -> None:
        super()._setup_model()
        buffer = self.rollout_buffer
        if isinstance(buffer, RecurrentDictRolloutBuffer):
            buffer_class = _InOrderDictBuffer if self._in_order else None
        elif isinstance(self.policy, RecurrentCorePolicy):
            buffer_class = _InOrderUnpaddedBuffer if self._in_order else _UnpaddedBuffer
        else:
            buffer_class = _InOrderBuffer if self._in_order else None
        if buffer_class is not None:
            # Our buffers only change how sb3-contrib's samples minibatches (no state of their own; their
            # mixins derive from SB3's BaseBuffer so that the object layout is the same), so the buffer the
            # parent built becomes one instead of being built again.
            buffer.__class__ = buffer_class


class RecurrentA2C(RimsPPO):
    """A2C with a recurrent policy, as a configuration of RecurrentPPO (Huang et al. 2022).

    One epoch, one full-batch update in buffer order, no advantage normalisation, ``gae_lambda`` 1
    and RMSprop, with SB3 A2C's defaults (n_steps 5, lr 7e-4, ent_coef 0, vf_coef 0.5,
    max_grad_norm 0.5). At its only update the PPO ratio is 1, so clipping never acts and the
    gradient is A2C's. The policy's dropout must be off (it is in our RL configs): dropout live in the
    update but not in collection breaks that equality.
    """

    _in_order = True

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: Any,
        learning_rate: float = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_rms_prop: bool = True,
        rms_prop_eps: float = 1e-5,
        policy_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        fixed = sorted(set(kwargs) & {"n_epochs", "batch_size", "normalize_advantage"})
        if fixed:
            raise ValueError(f"{', '.join(fixed)}: fixed by A2C (one full-batch epoch, raw advantages)")
        policy_kwargs = dict(policy_kwargs or {})
        if use_rms_prop and "optimizer_class" not in policy_kwargs:
            policy_kwargs["optimizer_class"] = torch.optim.RMSprop
            policy_kwargs["optimizer_kwargs"] = dict(alpha=0.99, eps=rms_prop_eps, weight_decay=0)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=None,  # the whole rollout
            n_epochs=1,
            gamma=gamma,
            gae_lambda=gae_lambda,
            normalize_advantage=False,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            policy_kwargs=policy_kwargs,
            **kwargs,
        )


# ------------------------------------------------------------------------------------- state


def algorithm_state(model, rng: dict[str, Any] | None = None, parameters: bool = True) -> dict[str, Any]:
    """What continuing an SB3 algorithm needs, as tensors and plain data (a checkpoint's payload): its
    networks and optimizers (SB3's ``get_parameters``) and other torch variables (SAC's entropy
    coefficient), step and update counters, the recent episodes behind the logged means, the replay
    buffer of an off-policy algorithm, the statistics of a ``VecNormalize`` env, and ``rng`` (every random
    stream, :func:`rims_rl.agents.checkpointing.rng_state`); numpy arrays stay numpy (a checkpoint turns
    them into tensors). Without ``parameters``, all but the networks
    and optimizers (which do not change while an on-policy algorithm collects)."""
    _, variables = model._get_torch_save_params()
    state = {
        "algorithm": type(model).__name__,
        **({"parameters": model.get_parameters()} if parameters else {}),
        "variables": {name: getattr(model, name).detach().clone() for name in variables},
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_num": int(model._episode_num),
        "episodes": [dict(info) for info in (model.ep_info_buffer or [])],
        "successes": list(model.ep_success_buffer or []),
        "rng": rng if rng is not None else rng_state(),
    }
    replay = getattr(model, "replay_buffer", None)
    if replay is not None:
        filled = replay.buffer_size if replay.full else replay.pos  # only the rows written so far
        arrays = {name: value[:filled].copy() for name, value in vars(replay).items() if _array(value)}
        state["replay"] = {"arrays": arrays, "pos": int(replay.pos), "full": bool(replay.full)}
    env = model.get_env()
    if isinstance(env, VecNormalize):
        state["normalizer"] = {
            "obs": _moments(env.obs_rms),
            "ret": _moments(env.ret_rms),
            "returns": np.array(env.returns),
        }
    return state


def restore_algorithm(model, state: dict[str, Any]) -> None:
    """Put what :func:`algorithm_state` saved into a freshly built ``model`` (same config), so that its
    next ``learn(reset_num_timesteps=False)`` continues the run."""
    model.set_parameters(state["parameters"], exact_match=True, device=model.device)
    for name, value in state["variables"].items():
        with torch.no_grad():
            getattr(model, name).copy_(value)
    model.num_timesteps = state["num_timesteps"]
    model._n_updates = state["n_updates"]
    model._episode_num = state["episode_num"]
    model.ep_info_buffer = deque(state["episodes"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(state["successes"], maxlen=model._stats_window_size)
    if "replay" in state:
        replay = model.replay_buffer
        for name, value in state["replay"]["arrays"].items():
            getattr(replay, name)[: len(value)] = value.numpy()
        replay.pos, replay.full = state["replay"]["pos"], state["replay"]["full"]
    if "normalizer" in state:
        set_normalizer(model.get_env(), state["normalizer"])
    set_rng_state(state["rng"])


def set_normalizer(env: VecNormalize, saved: dict[str, Any]) -> None:
    """Give a ``VecNormalize`` the statistics :func:`algorithm_state` saved (``state["normalizer"]``)."""
    _set_moments(env.obs_rms, saved["obs"])
    _set_moments(env.ret_rms, saved["ret"])
    env.returns[...] = saved["returns"].numpy()


def _array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype != object


def _moments(stats) -> dict[str, Any]:
    if isinstance(stats, dict):  # a Dict observation space keeps one RunningMeanStd per key
        return {key: _moments(value) for key, value in stats.items()}
    return {"mean": np.array(stats.mean), "var": np.array(stats.var), "count": float(stats.count)}


def _set_moments(stats, saved: dict[str, Any]) -> None:
    if isinstance(stats, dict):
        for key, value in stats.items():
            _set_moments(value, saved[key])
        return
    stats.mean, stats.var, stats.count = saved["mean"].numpy().copy(), saved["var"].numpy().copy(), saved["count"]
