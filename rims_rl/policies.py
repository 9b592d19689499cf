"""Recurrent actor-critic policies for sb3-contrib's ``RecurrentPPO`` with a RIMs or LSTM core.

Thin glue over ``RecurrentActorCriticPolicy``: the recurrent core is ours (``rims_rl.RIMs`` or
:class:`rims_rl.cores.LSTMCore`), everything else (features extractor, MLP heads, distributions,
state buffers) is sb3-contrib's. RIMs and LSTM policies share every line except the core, so a
comparison between them differs only in the core.

Critic structure (``critic_core``), and how sb3-contrib's two flags map onto it:

- ``"separate"`` (default; ``enable_critic_lstm=True``, sb3-contrib's default layout): a second core of
  the same kind for the critic.
- ``"detached"`` (``shared_lstm=True, enable_critic_lstm=False``): the critic reads the actor core's
  output detached, so the value loss trains neither the core nor the features extractor.
- ``"shared"``: one core feeds actor and critic and both losses train it, as in the PPO code base the
  RIMs paper used. On memory tasks the value loss then competes with the policy for the core (see
  ``docs/results.md``), which is why it is not the default.
- ``"none"`` (``shared_lstm=False, enable_critic_lstm=False``): a feed-forward critic on the features.

Input sets (``features``): ``"vector"`` (default) hands the core one feature vector per step, as SB3's
extractors make it; ``"set"`` swaps the features extractor for a set extractor
(:func:`rims_rl.extractors.set_extractor_for`: by the observations, a row per cell of MiniGrid's view and
one for the mission, or a row per position of the Nature CNN's last feature map), so that each RIMs unit's
input attention chooses among rows. An LSTM core reads the same rows flattened into one vector. A set extractor given as
``features_extractor_class`` is a set without the switch.

Every policy builds with no ``policy_kwargs``. Dropout in the core defaults to 0 here (the core itself keeps
the paper's 0.1 for supervised use): SB3 collects in eval mode and trains in train mode, so live dropout
makes PPO's first ratio differ from 1 and A2C's update differ from its own rollout.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from rims_rl.cores import LSTMCore
from rims_rl.extractors import SetExtractor, set_extractor_for
from rims_rl.rims import RIMs

__all__ = [
    "LstmCnnPolicy",
    "LstmMultiInputPolicy",
    "LstmPolicy",
    "RecurrentCorePolicy",
    "RimsCnnPolicy",
    "RimsMultiInputPolicy",
    "RimsPolicy",
]

CRITIC_CORES = ("separate", "detached", "shared", "none")
FEATURES = ("vector", "set")
DEFAULT_CRITIC_CORE = "separate"
# sb3-contrib's (shared_lstm, enable_critic_lstm) and the critic core each pair means.
_SB3_CRITIC = {(False, True): "separate", (True, False): "detached", (False, False): "none"}
# Episode-start value that marks a padding slot of a minibatch whose observations come unpadded
# (see ``RecurrentCorePolicy._padded_features``).
PADDING_START = -1.0


def critic_core_from(critic_core: str | None, shared_lstm: bool | None, enable_critic_lstm: bool | None) -> str:
    """The critic core that ``critic_core`` and sb3-contrib's flags ask for together (``ValueError`` when
    they disagree). An unset ``enable_critic_lstm`` means ``not shared_lstm``, so ``shared_lstm=True``
    alone works (sb3-contrib would assert that both flags are set)."""
    if critic_core is not None and critic_core not in CRITIC_CORES:
        raise ValueError(f"critic_core must be one of {', '.join(CRITIC_CORES)}, got {critic_core!r}")
    if shared_lstm is None and enable_critic_lstm is None:
        return critic_core or DEFAULT_CRITIC_CORE
    shared = bool(shared_lstm)
    enable = (not shared) if enable_critic_lstm is None else bool(enable_critic_lstm)
    if (shared, enable) not in _SB3_CRITIC:
        raise ValueError("shared_lstm=True and enable_critic_lstm=True: choose one critic (as in sb3-contrib)")
    implied = _SB3_CRITIC[shared, enable]
    if critic_core is not None and critic_core != implied:
        raise ValueError(
            f"critic_core={critic_core!r} contradicts shared_lstm={shared}, enable_critic_lstm={enable} "
            f"(which mean {implied!r}): set one or the other"
        )
    return implied


class RecurrentCorePolicy(RecurrentActorCriticPolicy):
    """A ``RecurrentActorCriticPolicy`` whose recurrent core comes from :meth:`_build_core`.

    Subclasses define the core; this class swaps it in for sb3-contrib's ``nn.LSTM``, rebuilds the
    optimizer over the final parameters (Adam fused unless ``optimizer_kwargs`` sets ``fused`` or
    ``foreach``), runs whole sequences through the core in one call, and keeps every size in
    :meth:`_get_constructor_parameters` so ``policy.save`` / ``load`` work.

    Args:
        critic_core: ``"separate"`` (default), ``"detached"``, ``"shared"`` or ``"none"`` (see the module
            docstring).
        shared_lstm, enable_critic_lstm: sb3-contrib's flags, with sb3-contrib's meaning; they choose the
            critic core when given (``critic_core`` may be given too if it agrees).
        features: ``"vector"`` or ``"set"`` (see the module docstring); ``None`` means ``"set"`` when
            ``features_extractor_class`` is a :class:`rims_rl.extractors.SetExtractor`, else ``"vector"``.
        **kwargs: everything ``RecurrentActorCriticPolicy`` takes, except its LSTM size settings.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        critic_core: str | None = None,
        shared_lstm: bool | None = None,
        enable_critic_lstm: bool | None = None,
        features: str | None = None,
        **kwargs: Any,
    ) -> None:
        critic_core = critic_core_from(critic_core, shared_lstm, enable_critic_lstm)
        extractor = kwargs.get("features_extractor_class", FlattenExtractor)  # sb3-contrib's default
        given_set = isinstance(extractor, type) and issubclass(extractor, SetExtractor)
        if features is None:
            features = "set" if given_set else "vector"
        if features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
        if features == "vector" and given_set:
            raise ValueError(f"features='vector' with the set extractor {extractor.__name__}: use features='set'")
        if features == "set":
            kwargs["features_extractor_class"] = set_extractor_for(extractor, observation_space)
        self.features = features
        for key, instead in self._lstm_settings.items():
            if key in kwargs:
                raise ValueError(f"{type(self).__name__} does not take {key}: {instead}")
        if critic_core in ("shared", "detached") and not kwargs.get("share_features_extractor", True):
            raise ValueError(f"critic_core={critic_core!r} needs share_features_extractor=True")
        self.critic_core = critic_core
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            lstm_hidden_size=self._core_output_size(),
            # The parent builds a feed-forward critic only for "none".
            shared_lstm=critic_core in ("shared", "detached"),
            enable_critic_lstm=critic_core == "separate",
            # The parent always builds nn.LSTMs, which the cores below replace: on the meta device they
            # hold no memory and draw no random numbers.
            lstm_kwargs={"device": "meta"},
            **kwargs,
        )
        # sb3-contrib's flag means a detached critic; "shared" only borrowed it to skip the parent's critic.
        self.shared_lstm = critic_core == "detached"
        # A core that reads sets gets the rows (N, row_size); any other core the flat features.
        extractor = self.features_extractor if self.share_features_extractor else self.pi_features_extractor
        self.core_rows = extractor.set_size if features == "set" and self.reads_sets else None
        core_input = extractor.row_size if self.core_rows else self.features_dim
        self.lstm_actor = self._build_core(core_input)
        if critic_core == "separate":
            self.lstm_critic = self._build_core(core_input)
        # Convolutions (the Nature CNN's) run about 25% faster forward and backward in channels-last
        # layout on CPU (oneDNN); only 4-d weights change layout, values are equal up to rounding.
        self.to(memory_format=torch.channels_last)
        convolutional = any(parameter.dim() == 4 for parameter in self.parameters())
        self._byte_images = convolutional and self.normalize_images and is_image_space(self.observation_space)
        # The parent built its optimizer over the nn.LSTM just replaced.
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self._optimizer_options())

    def _optimizer_options(self) -> dict[str, Any]:
        """``optimizer_kwargs``, with Adam fused unless they choose an implementation: on CPU torch
        otherwise runs Adam one parameter tensor at a time (6.9 ms against 1.9 ms per step for the
        Atari RIMs policy's 3.8M parameters on this project's CPU); same algorithm, rounding aside."""
        options = dict(self.optimizer_kwargs)
        if issubclass(self.optimizer_class, torch.optim.Adam) and not {"fused", "foreach"} & set(options):
            options["fused"] = True
        return options

    # -- what a subclass provides

    # sb3-contrib's LSTM settings that this policy does not take, and what to use instead.
    _lstm_settings: ClassVar[dict[str, str]] = {}
    #: Whether the core reads an input set as rows (RIMs' input attention) rather than one flat vector.
    reads_sets: ClassVar[bool] = False

    def _core_output_size(self) -> int:
        raise NotImplementedError

    def _build_core(self, input_size: int) -> nn.Module:
        raise NotImplementedError

    def _core_parameters(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- sb3-contrib hooks

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(critic_core=self.critic_core, features=self.features, **self._core_parameters())
        return data

    def extract_features(
        self, obs: torch.Tensor, features_extractor: nn.Module | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.share_features_extractor:
            return self._features(obs, features_extractor or self.features_extractor)
        return self._features(obs, self.pi_features_extractor), self._features(obs, self.vf_features_extractor)

    def _features(self, obs, extractor: nn.Module) -> torch.Tensor:
        """SB3's preprocessing and ``extractor``, except that a batch of byte images is scaled in place
        and handed over in channels-last layout, like the convolutions' weights: SB3's ``obs.float() /
        255`` allocates a second float batch, and oneDNN would convert its layout forward and again
        backward (Nature CNN on 256 frames: about 15 of 105 ms per minibatch on this project's CPU).
        Same numbers: the same division, in float32."""
        if self._byte_images and obs.dtype == torch.uint8 and obs.dim() == 4:
            return extractor(obs.float().div_(255.0).contiguous(memory_format=torch.channels_last))
        return super(ActorCriticPolicy, self).extract_features(obs, extractor)

    def _process_sequence(
        self,
        features: torch.Tensor,
        lstm_states: tuple[torch.Tensor, torch.Tensor],
        episode_starts: torch.Tensor,
        lstm: nn.Module,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        # The core resets flagged entries itself, so the whole (padded) sequence is one call, and
        # collection (T = 1) and training run the same code. A set's rows go in as (T, B, N, row_size).
        n_seq = lstm_states[0].shape[1]
        rows = (lstm.input_size,) if self.core_rows is None else (self.core_rows, lstm.input_size)
        sequence = features.reshape(n_seq, -1, *rows).swapaxes(0, 1)
        starts = episode_starts.reshape(n_seq, -1).swapaxes(0, 1)
        output, states = lstm(sequence, lstm_states, starts)
        return output.transpose(0, 1).flatten(0, 1), states

    def _latents(
        self, obs: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, RNNStates]:
        features = self.extract_features(obs)
        if not self.share_features_extractor:
            features = torch.cat(features, dim=-1)
        features, episode_starts = self._padded_features(features, episode_starts)
        pi_features, vf_features = (features, features) if self.share_features_extractor else features.chunk(2, dim=-1)
        latent_pi, states_pi = self._process_sequence(pi_features, lstm_states.pi, episode_starts, self.lstm_actor)
        if self.critic_core == "separate":
            latent_vf, states_vf = self._process_sequence(vf_features, lstm_states.vf, episode_starts, self.lstm_critic)
        elif self.critic_core == "shared":
            latent_vf, states_vf = latent_pi, states_pi  # no detach: the value loss trains the core too
        elif self.critic_core == "detached":
            latent_vf, states_vf = latent_pi.detach(), states_pi
        else:
            latent_vf, states_vf = self.critic(vf_features), states_pi
        return (
            self.mlp_extractor.forward_actor(latent_pi),
            self.mlp_extractor.forward_critic(latent_vf),
            RNNStates(states_pi, states_vf),
        )

    @staticmethod
    def _padded_features(features: torch.Tensor, episode_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lay unpadded features out in the padded (sequence, step) grid of ``episode_starts``.

        sb3-contrib pads every sequence of a minibatch to the longest one and runs the features
        extractor on the padding too (half again the CNN work on Atari). Our algorithms' buffers
        send only the real observations and mark padding slots with ``PADDING_START``; features go
        through the extractor once and land in their slots, the padding gets zeros. With a stock
        buffer (one observation per slot) this is the identity.
        """
        if features.shape[0] == episode_starts.shape[0]:
            return features, episode_starts
        real = episode_starts != PADDING_START
        slots = real.nonzero().squeeze(-1)
        if slots.shape[0] != features.shape[0]:
            raise ValueError(
                f"{features.shape[0]} observations for {slots.shape[0]} non-padding slots of {episode_starts.shape[0]}"
            )
        padded = features.new_zeros(episode_starts.shape[0], features.shape[-1]).index_copy(0, slots, features)
        return padded, episode_starts * real

    def forward(
        self, obs: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RNNStates]:
        latent_pi, latent_vf, states = self._latents(obs, lstm_states, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        return actions.reshape((-1, *self.action_space.shape)), self.value_net(latent_vf), log_prob, states

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent_pi, latent_vf, _ = self._latents(obs, lstm_states, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def predict_values(
        self, obs: torch.Tensor, lstm_states: tuple[torch.Tensor, torch.Tensor], episode_starts: torch.Tensor
    ) -> torch.Tensor:
        features = self._features(obs, self.vf_features_extractor)
        if self.critic_core == "none":
            latent_vf = self.critic(features)
        else:
            core = self.lstm_critic if self.critic_core == "separate" else self.lstm_actor
            latent_vf, _ = self._process_sequence(features, lstm_states, episode_starts, core)
        return self.value_net(self.mlp_extractor.forward_critic(latent_vf))


class RimsPolicy(RecurrentCorePolicy):
    """Recurrent actor-critic with a :class:`rims_rl.RIMs` core (MLP features by default).

    Args:
        rims_kwargs: arguments of :class:`rims_rl.RIMs` except ``input_size`` (the features width),
            merged key by key over :attr:`default_rims_kwargs`; the rest keep the core's defaults (the
            paper's Table 3) except the dropouts, 0 here. Non-zero dropout warns once: dropout that is
            live in the update but not in collection makes PPO's first ratio differ from 1.
        **kwargs: see :class:`RecurrentCorePolicy`.
    """

    #: Without ``rims_kwargs``: 4 units of 32 (the width of a small LSTM), 3 active, for vector inputs; 3 of 4
    #: learned both memory tasks of ``benchmarks/policy_defaults.py`` better than 2 of 4 (docs/results.md).
    default_rims_kwargs: ClassVar[dict[str, Any]] = {
        "unit_size": 32,
        "num_units": 4,
        "k_active": 3,
        "input_dropout": 0.0,
        "comm_dropout": 0.0,
    }
    reads_sets: ClassVar[bool] = True
    _lstm_settings: ClassVar[dict[str, str]] = {
        "lstm_hidden_size": "the core's width is rims_kwargs num_units x unit_size",
        "n_lstm_layers": "a RIMs core is one layer of num_units units (rims_kwargs num_units)",
        "lstm_kwargs": "the core's arguments go in rims_kwargs",
    }

    def __init__(self, observation_space, action_space, lr_schedule, rims_kwargs: dict | None = None, **kwargs):
        if "input_size" in (rims_kwargs or {}):
            raise ValueError("rims_kwargs must not set input_size: it is the features extractor's width")
        rims_kwargs = {**self.default_rims_kwargs, **(rims_kwargs or {})}
        # Fail on bad RIMs arguments now, before the parent builds anything.
        RIMs.check_arguments(**rims_kwargs)
        live = [key for key in ("input_dropout", "comm_dropout") if rims_kwargs.get(key, 0.1) > 0]
        if live:
            warnings.warn(
                f"{type(self).__name__}: {' and '.join(live)} > 0. SB3 acts with dropout off and updates with it "
                "on, so PPO's first ratio differs from 1 and A2C's gradient is not that of its rollout; "
                "set them to 0 unless you mean it.",
                UserWarning,
                stacklevel=2,
            )
        self.rims_kwargs = rims_kwargs
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _core_output_size(self) -> int:
        return self.rims_kwargs["num_units"] * self.rims_kwargs["unit_size"]

    def _build_core(self, input_size: int) -> nn.Module:
        return RIMs(input_size, **self.rims_kwargs)

    def _core_parameters(self) -> dict[str, Any]:
        return {"rims_kwargs": dict(self.rims_kwargs)}


class LstmPolicy(RecurrentCorePolicy):
    """The LSTM baseline: the same policy as :class:`RimsPolicy` with an ``nn.LSTM`` core.

    Args:
        lstm_hidden_size: the LSTM's hidden size (the core's output width); 256 as sb3-contrib's.
        **kwargs: see :class:`RecurrentCorePolicy`.
    """

    _lstm_settings: ClassVar[dict[str, str]] = {
        "n_lstm_layers": "the baseline has one layer, like a RIMs core",
        "lstm_kwargs": "the baseline is a plain one-layer nn.LSTM of lstm_hidden_size",
    }

    def __init__(self, observation_space, action_space, lr_schedule, lstm_hidden_size: int = 256, **kwargs):
        if isinstance(lstm_hidden_size, bool) or not isinstance(lstm_hidden_size, int) or lstm_hidden_size < 1:
            raise ValueError(f"lstm_hidden_size must be a positive integer, got {lstm_hidden_size!r}")
        self.core_hidden_size = lstm_hidden_size
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _core_output_size(self) -> int:
        return self.core_hidden_size

    def _build_core(self, input_size: int) -> nn.Module:
        return LSTMCore(input_size, self.core_hidden_size)

    def _core_parameters(self) -> dict[str, Any]:
        return {"lstm_hidden_size": self.core_hidden_size}


class RimsCnnPolicy(RimsPolicy):
    """:class:`RimsPolicy` with NatureCNN features, for image observations; without ``rims_kwargs`` the
    paper's Atari core (6 units of 100, 4 active)."""

    default_rims_kwargs: ClassVar[dict[str, Any]] = {
        **RimsPolicy.default_rims_kwargs,
        "unit_size": 100,
        "num_units": 6,
        "k_active": 4,
    }

    def __init__(self, *args, features_extractor_class: type = NatureCNN, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class RimsMultiInputPolicy(RimsPolicy):
    """:class:`RimsPolicy` for ``Dict`` observations (sb3's CombinedExtractor)."""

    def __init__(self, *args, features_extractor_class: type = CombinedExtractor, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class LstmCnnPolicy(LstmPolicy):
    """:class:`LstmPolicy` with NatureCNN features, for image observations."""

    def __init__(self, *args, features_extractor_class: type = NatureCNN, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class LstmMultiInputPolicy(LstmPolicy):
    """:class:`LstmPolicy` for ``Dict`` observations (sb3's CombinedExtractor)."""

    def __init__(self, *args, features_extractor_class: type = CombinedExtractor, **kwargs):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
