"""Recurrent cores with the call signature the policies use: ``core(x, (h, c), episode_starts)``.

``rims_rl.RIMs`` has it natively; :class:`LSTMCore` gives ``nn.LSTM`` the same one, so the LSTM
baseline runs through exactly the same policy code as RIMs. Pure torch.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from rims_rl.rims import RIMs
from rims_rl.step import init_forget_bias

__all__ = ["LSTMCore", "build_core"]


class LSTMCore(nn.LSTM):
    """A one-layer ``nn.LSTM`` that also takes ``episode_starts`` (T, B), like :class:`rims_rl.RIMs`.

    A flagged entry's state is zeroed right before that step. The fused LSTM kernel runs over each
    stretch between resets; during PPO training sb3-contrib starts a new sequence at every episode
    start, so a reset only ever falls on the first step and the whole sequence is one kernel call.

    Args:
        input_size, hidden_size, **kwargs: as ``nn.LSTM`` (one layer).
        forget_bias: when given, the forget gate's bias starts at this value (``bias_ih``; ``bias_hh``'s
            forget slice at 0) instead of ``nn.LSTM``'s uniform draw. A bias of a few units keeps the
            gradient alive across long spans at the start of training (the copying task needs 5).
    """

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float | None = None, **kwargs) -> None:
        if kwargs.get("num_layers", 1) != 1:
            raise ValueError("LSTMCore has one layer, like a RIMs core (num_layers must be 1)")
        super().__init__(input_size, hidden_size, **kwargs)
        if forget_bias is not None:
            init_forget_bias(self.bias_ih_l0, self.bias_hh_l0, hidden_size, forget_bias)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if episode_starts is None:
            return super().forward(x, state)
        if state is None:
            zeros = x.new_zeros(1, x.shape[1], self.hidden_size)
            state = (zeros, zeros)
        keep = (1.0 - episode_starts.to(x.dtype)).unsqueeze(-1)
        later = episode_starts[1:].any(dim=1).nonzero().flatten().add(1).tolist()
        bounds = [0, *later, x.shape[0]]
        outputs = []
        for start, end in itertools.pairwise(bounds):
            state = (state[0] * keep[start], state[1] * keep[start])
            output, state = super().forward(x[start:end], state)
            outputs.append(output)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs)), state


def build_core(core: str, input_size: int, settings: dict) -> nn.Module:
    """A recurrent core from its kind and settings: ``"rims"`` (``rims_rl.RIMs``'s arguments) or
    ``"lstm"`` (``hidden_size`` and an optional ``forget_bias``, :class:`LSTMCore`)."""
    if core == "rims":
        return RIMs(input_size, **settings)
    if core == "lstm":
        return LSTMCore(input_size, **settings)
    raise ValueError(f"core must be rims or lstm, got {core!r}")
