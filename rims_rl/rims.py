"""Recurrent Independent Mechanisms (Goyal et al., ICLR 2021, Section 2) as one batched torch module.

The step itself is :func:`rims_rl.step.rims_step`; the time loops that run it are in :mod:`rims_rl.loop`.
This module holds the parameters, their initialisation and layout, and chooses the loop from the
configuration. Pure torch: nothing here knows about SB3 or gymnasium.
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rims_rl.loop import autograd_loop, fused_loop
from rims_rl.step import CELL_GATES, StepSpec, StepWeights, init_forget_bias

__all__ = ["RIMs", "RIMsDetails"]


class RIMsDetails(NamedTuple):
    """Per-step internals of a :class:`RIMs` call, for tests, analysis and plots.

    Attributes:
        active: bool tensor ``(T, B, num_units)``, True where a unit updated at that step.
        input_attention: ``(T, B, num_units, input_heads, N + 1)`` attention probabilities of each
            unit's query over the input set, the null row first (index 0). Empty in the last
            dimension when ``input_attention=False``.
    """

    active: Tensor
    input_attention: Tensor


# Row count below which the rows of a projection are zero-padded. BLAS libraries pick their
# kernels by matrix size, and the kernels for a few rows sum in another order: padding makes a
# T-step call and T one-step calls run the same kernels, so they agree bit for bit.
_MIN_ROWS = 16


def _project(flat: Tensor, weight: Tensor) -> Tensor:
    """``flat (rows, n) @ weight``, rows zero-padded to at least ``_MIN_ROWS`` for the kernel choice."""
    rows = flat.shape[0]
    if rows < _MIN_ROWS:
        flat = torch.cat([flat, flat.new_zeros(_MIN_ROWS - rows, flat.shape[1])])
    return (flat @ weight)[:rows]


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_probability(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")


class RIMs(nn.Module):
    r"""Recurrent Independent Mechanisms: ``num_units`` small recurrent cells that compete for the input.

    Shaped like :class:`torch.nn.LSTM` with one layer and time-major input, so it can replace one:
    ``output, (h, c) = rims(x, (h, c))``. Each step, for every batch entry:

    1. The input set ``x_t`` (one row, or ``N`` rows) gets an all-zero *null* row prepended. Keys and
       values are bias-free projections shared by all units, so the null row's key and value are
       exactly zero. Each unit queries with its own projection of its previous state
       (multi-head scaled dot-product attention over the rows).
    2. The ``k_active`` units that put the least attention probability on the null row (averaged
       over heads) are active. Ties go to the lower unit index.
    3. Active units update with their own cell weights, reading their attention read-out (heads
       concatenated). Inactive units keep ``h`` and ``c`` bit for bit; gradient passes through them
       as an identity.
    4. Active units attend over all units' states (multi-head, unit-specific projections) and add
       the result to their ``h`` (residual). Inactive units are untouched. As in the authors' code,
       the residual is bounded: ``sigmoid(gate) * tanh(update)``, both unit-specific projections of
       the attention read-out. A plain linear residual lets ``h`` grow without limit, since an
       inactive unit keeps its ``h`` and others keep adding linear functions of it (seen in A2C
       training: ``h`` reached 1e38); bounded, ``|h| < 2`` for the LSTM cell.

    All units are computed together (one batched matmul per projection); only time is a loop.

    Args:
        input_size: width of one input row.
        unit_size: hidden size of one unit.
        num_units: number of units ``K``. The output width is ``K * unit_size``.
        k_active: number of units active per step, in ``[1, num_units]``.
        cell: ``"lstm"`` or ``"gru"``. A GRU has no cell state: ``c`` is carried through unchanged
            so the ``(h, c)`` state layout stays that of an LSTM.
        input_heads: heads of the input attention.
        input_key_size: key (and query) size per input head.
        input_value_size: value size per input head. The heads' read-outs are concatenated, so each
            cell reads ``input_heads * input_value_size`` numbers. ``None`` means ``unit_size``:
            with 4 heads, the paper's input values of 4 x unit size (Table 3).
        comm_heads: heads of the communication attention.
        comm_key_size: key (and query) size per communication head.
        comm_value_size: value size per communication head.
        input_dropout: dropout on the input attention probabilities (after selection, which
            always uses the undropped probabilities).
        comm_dropout: dropout on the communication attention probabilities.
        input_attention: ``False`` is the paper's "no input attention" ablation: every unit reads
            the input directly (the mean of the rows of an input set), all units are active every
            step whatever ``k_active`` says, and all of them communicate.
        communication: ``False`` drops step 4 (the paper's "no communication" ablation).
        forget_bias: when given (LSTM cells only), every unit's forget gate bias starts at this value
            (``bias_ih``'s forget slice; ``bias_hh``'s at 0), like :class:`rims_rl.cores.LSTMCore`'s.
            ``None`` keeps the uniform draw. It matters when every unit is active: an inactive unit keeps
            its state whatever its gates, but with ``k_active = num_units`` each cell's forget gate
            alone decides how much of the state, and of the gradient, crosses a long span (on the
            copying task, see ``docs/results.md``).

    Shape:
        - ``x``: ``(T, B, input_size)``, or ``(T, B, N, input_size)`` for an input set of ``N`` rows.
        - ``state``: ``(h, c)``, each ``(1, B, num_units * unit_size)``; ``None`` means zeros. Unit
          ``k`` owns the slice ``[k * unit_size, (k + 1) * unit_size)``.
        - ``episode_starts``: ``(T, B)``; a nonzero entry zeroes that batch entry's state right
          before step ``t`` (the convention of sb3-contrib's recurrent policies).
        - output: ``(T, B, num_units * unit_size)``, the ``h`` of every step.

    Initialisation:
        Cell weights and biases are uniform in ``+-1/sqrt(unit_size)`` (as in ``nn.LSTM``), but for
        the forget gates' biases when ``forget_bias`` is given; every
        attention projection is uniform in ``+-1/sqrt(fan_in)`` (``nn.Linear``'s scale). Each unit
        draws its own weights.
    """

    def __init__(
        self,
        input_size: int,
        unit_size: int,
        num_units: int,
        k_active: int,
        cell: str = "lstm",
        input_heads: int = 4,
        input_key_size: int = 64,
        input_value_size: int | None = None,
        comm_heads: int = 4,
        comm_key_size: int = 32,
        comm_value_size: int = 32,
        input_dropout: float = 0.1,
        comm_dropout: float = 0.1,
        input_attention: bool = True,
        communication: bool = True,
        forget_bias: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if input_value_size is None:
            input_value_size = unit_size
        self.check_arguments(
            input_size=input_size,
            unit_size=unit_size,
            num_units=num_units,
            k_active=k_active,
            cell=cell,
            input_heads=input_heads,
            input_key_size=input_key_size,
            input_value_size=input_value_size,
            comm_heads=comm_heads,
            comm_key_size=comm_key_size,
            comm_value_size=comm_value_size,
            input_dropout=input_dropout,
            comm_dropout=comm_dropout,
            input_attention=input_attention,
            communication=communication,
            forget_bias=forget_bias,
        )

        self.input_size = input_size
        self.unit_size = unit_size
        self.num_units = num_units
        self.k_active = k_active
        self.cell = cell
        self.input_heads = input_heads
        self.input_key_size = input_key_size
        self.input_value_size = input_value_size
        self.comm_heads = comm_heads
        self.comm_key_size = comm_key_size
        self.comm_value_size = comm_value_size
        self.input_dropout = float(input_dropout)
        self.comm_dropout = float(comm_dropout)
        self.input_attention = bool(input_attention)
        self.communication = bool(communication)
        self.forget_bias = None if forget_bias is None else float(forget_bias)
        # nn.LSTM's attribute names, which sb3-contrib reads to size its state buffers.
        self.hidden_size = num_units * unit_size
        self.num_layers = 1

        factory = {"device": device, "dtype": dtype}
        units, gates = num_units, CELL_GATES[cell] * unit_size
        cell_input = input_heads * input_value_size if input_attention else input_size
        if input_attention:
            self.input_key = nn.Parameter(torch.empty(input_size, input_heads * input_key_size, **factory))
            self.input_value = nn.Parameter(torch.empty(input_size, input_heads * input_value_size, **factory))
            self.input_query = nn.Parameter(torch.empty(units, unit_size, input_heads * input_key_size, **factory))
        self.weight_ih = nn.Parameter(torch.empty(units, cell_input, gates, **factory))
        self.weight_hh = nn.Parameter(torch.empty(units, unit_size, gates, **factory))
        self.bias_ih = nn.Parameter(torch.empty(units, gates, **factory))
        self.bias_hh = nn.Parameter(torch.empty(units, gates, **factory))
        if communication:
            qkv = comm_heads * (2 * comm_key_size + comm_value_size)
            self.comm_qkv = nn.Parameter(torch.empty(units, unit_size, qkv, **factory))
            # Update and gate halves of the bounded residual (see the class docstring, step 4).
            self.comm_output = nn.Parameter(torch.empty(units, comm_heads * comm_value_size, 2 * unit_size, **factory))
            self.comm_output_bias = nn.Parameter(torch.empty(units, 2 * unit_size, **factory))
        self.reset_parameters()

    @classmethod
    def check_arguments(cls, **kwargs) -> None:
        """Raise ``ValueError`` naming the first of the constructor's keyword arguments (``input_size``
        may be left out) that a module could not be built with; builds nothing. The constructor calls it,
        and so do the policies, before sb3-contrib builds anything."""
        try:
            bound = inspect.signature(cls.__init__).bind(None, **{"input_size": 1, **kwargs})
        except TypeError as error:
            raise ValueError(f"RIMs: {error}") from None
        bound.apply_defaults()
        a = bound.arguments
        value_size = a["unit_size"] if a["input_value_size"] is None else a["input_value_size"]
        for name in ("input_size", "unit_size", "num_units", "input_heads", "input_key_size"):
            _check_positive_int(name, a[name])
        _check_positive_int("input_value_size", value_size)
        for name in ("comm_heads", "comm_key_size", "comm_value_size"):
            _check_positive_int(name, a[name])
        k_active, num_units = a["k_active"], a["num_units"]
        if isinstance(k_active, bool) or not isinstance(k_active, int) or not 1 <= k_active <= num_units:
            raise ValueError(f"k_active must be an integer in [1, num_units={num_units}], got {k_active!r}")
        if a["cell"] not in CELL_GATES:
            raise ValueError(f"cell must be one of {sorted(CELL_GATES)}, got {a['cell']!r}")
        _check_probability("input_dropout", a["input_dropout"])
        _check_probability("comm_dropout", a["comm_dropout"])
        for name in ("input_attention", "communication"):
            if not isinstance(a[name], bool):
                raise ValueError(f"{name} must be True or False, got {a[name]!r}")
        forget_bias = a["forget_bias"]
        if forget_bias is not None:
            number = isinstance(forget_bias, int | float) and not isinstance(forget_bias, bool)
            if not number or not math.isfinite(forget_bias):
                raise ValueError(f"forget_bias must be a finite number or None, got {forget_bias!r}")
            if a["cell"] != "lstm":
                raise ValueError(f"forget_bias needs LSTM cells (a {a['cell']} cell has no forget gate)")

    def reset_parameters(self) -> None:
        """Re-draw every weight with the documented initialisation."""
        bound = 1.0 / math.sqrt(self.unit_size)
        for weight in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            nn.init.uniform_(weight, -bound, bound)
        if self.forget_bias is not None:
            init_forget_bias(self.bias_ih, self.bias_hh, self.unit_size, self.forget_bias)
        fan_in = {"input_key": self.input_size, "input_value": self.input_size}
        fan_in |= {"input_query": self.unit_size, "comm_qkv": self.unit_size}
        fan_in["comm_output"] = fan_in["comm_output_bias"] = self.comm_heads * self.comm_value_size
        for name, size in fan_in.items():
            if hasattr(self, name):
                nn.init.uniform_(getattr(self, name), -1.0 / math.sqrt(size), 1.0 / math.sqrt(size))

    def extra_repr(self) -> str:
        text = (
            f"{self.input_size}, unit_size={self.unit_size}, num_units={self.num_units}, "
            f"k_active={self.k_active}, cell={self.cell!r}"
        )
        if not self.input_attention:
            text += ", input_attention=False"
        if not self.communication:
            text += ", communication=False"
        if self.forget_bias is not None:
            text += f", forget_bias={self.forget_bias:g}"
        return text

    # ------------------------------------------------------------------ public API

    def forward(
        self,
        x: Tensor,
        state: tuple[Tensor, Tensor] | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run ``T`` steps. Returns ``(output, (h, c))``; see the class docstring for shapes."""
        output, state, _ = self._run(x, state, episode_starts, record=False)
        return output, state

    def forward_with_details(
        self,
        x: Tensor,
        state: tuple[Tensor, Tensor] | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], RIMsDetails]:
        """Like :meth:`forward`, and also returns the per-step :class:`RIMsDetails`."""
        return self._run(x, state, episode_starts, record=True)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> tuple[Tensor, Tensor]:
        """Zero ``(h, c)`` for ``batch_size`` entries."""
        ref = self.weight_hh
        shape = (1, batch_size, self.hidden_size)
        zeros = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)
        return zeros, zeros.clone()

    # ------------------------------------------------------------------ internals

    def _check_inputs(self, x: Tensor, state, episode_starts) -> None:
        if not isinstance(x, Tensor) or x.dim() not in (3, 4):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be (T, B, input_size) or (T, B, N, input_size), got {shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x's last dimension must equal input_size={self.input_size}, got {x.shape[-1]}")
        ref = self.weight_hh
        if x.dtype != ref.dtype or x.device != ref.device:
            raise ValueError(f"x is {x.dtype} on {x.device}, but the module is {ref.dtype} on {ref.device}")
        if x.shape[0] == 0 or x.shape[1] == 0 or (x.dim() == 4 and x.shape[2] == 0):
            raise ValueError(f"x must have at least one step, batch entry and row, got {tuple(x.shape)}")
        batch = x.shape[1]
        if state is not None:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError("state must be a tuple (h, c) or None")
            expected = (1, batch, self.hidden_size)
            for name, tensor in zip(("h", "c"), state, strict=True):
                if tuple(tensor.shape) != expected:
                    raise ValueError(f"state {name} must have shape {expected}, got {tuple(tensor.shape)}")
        if episode_starts is not None and tuple(episode_starts.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"episode_starts must have shape (T, B)={tuple(x.shape[:2])}, got {tuple(episode_starts.shape)}"
            )

    def _spec(self) -> StepSpec:
        return StepSpec(
            units=self.num_units,
            unit_size=self.unit_size,
            k_active=self.k_active,
            cell=self.cell,
            input_attention=self.input_attention,
            input_heads=self.input_heads,
            input_key_size=self.input_key_size,
            communication=self.communication,
            comm_heads=self.comm_heads,
            comm_key_size=self.comm_key_size,
            comm_value_size=self.comm_value_size,
        )

    def _live_dropout(self) -> tuple[float, float]:
        """The (input, communication) dropout probabilities that act in this call."""
        if not self.training:
            return 0.0, 0.0
        return (self.input_dropout if self.input_attention else 0.0), (self.comm_dropout if self.communication else 0.0)

    def _run(self, x: Tensor, state, episode_starts, record: bool):
        self._check_inputs(x, state, episode_starts)
        batch = x.shape[1]
        units, size = self.num_units, self.unit_size
        if state is None:
            state = self.initial_state(batch, x.device, x.dtype)
        # Unit-major layout (K, B, unit_size) so every per-unit projection is one bmm.
        h = state[0].reshape(batch, units, size).transpose(0, 1)
        c = state[1].reshape(batch, units, size).transpose(0, 1)
        keep = None if episode_starts is None else (1.0 - episode_starts.to(x.dtype)).unsqueeze(-1)
        spec = self._spec()
        keys, values, weight_ih = self._input_side(x)
        weights = self._step_weights(weight_ih)
        dropout = self._live_dropout()
        # The fused loop covers what RL runs: LSTM cells reading one input row or a set through attention,
        # no live dropout, any batch size. Everything else, and the per-step details, take autograd.
        if not record and self.cell == "lstm" and self.input_attention and dropout == (0.0, 0.0):
            outputs, h, c = fused_loop(spec, weights, keys, values, h, c, keep)
            output, final = self._lstm_layout(outputs, h, c)
            return output, final, None
        outputs, h, c, infos = autograd_loop(spec, weights, keys, values, h, c, keep, dropout, details=record)
        output, final = self._lstm_layout(outputs, h, c)
        details = None
        if record:
            all_active = torch.ones(units, batch, dtype=torch.bool, device=x.device)
            active = [all_active if info["active"] is None else info["active"] for info in infos]
            details = RIMsDetails(
                active=torch.stack(active).transpose(1, 2),
                input_attention=torch.stack([info["input_attention"] for info in infos]).transpose(1, 2),
            )
        return output, final, details

    def _input_side(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """The state-independent part of every step, for all steps at once: the keys and values the step
        reads (:class:`rims_rl.step.StepInputs`, stacked over steps), and the cells' input weights over
        those values.

        With one input row narrower than a head's value (``input_size < input_value_size``, as in the
        copying task or CartPole), each unit reads the row itself, weighted per head by its attention,
        through its ``weight_ih`` folded with the value projection: ``(p (x W_v)) W_ih = (p x) (W_v W_ih)``
        per head. Same numbers up to rounding, and each step's read-out product shrinks from
        ``H dv x G`` to ``H D x G`` per unit. The choice depends on the module's sizes alone.
        """
        steps, batch = x.shape[:2]
        heads, key_size = self.input_heads, self.input_key_size
        rows = x if x.dim() == 4 else x.unsqueeze(2)
        if not self.input_attention:
            return None, rows.mean(2), self.weight_ih  # every unit reads the (mean) input directly
        scale = 1.0 / math.sqrt(key_size)
        if rows.shape[2] == 1:
            flat = x.reshape(steps * batch, -1)
            keys = _project(flat, self.input_key).mul(scale).view(steps, batch, heads, key_size)
            if self.input_size < self.input_value_size:
                units, width = self.num_units, self.input_size
                per_head = self.input_value.view(width, heads, self.input_value_size)
                cells = self.weight_ih.view(units, heads, self.input_value_size, -1)
                folded = torch.einsum("dhv,khvg->khdg", per_head, cells).reshape(units, heads * width, -1)
                values = x.reshape(steps, batch, 1, width).expand(steps, batch, heads, width)
                return keys, values.reshape(steps, batch, heads * width), folded
            return keys, _project(flat, self.input_value).view(steps, batch, -1), self.weight_ih
        # An input set: prepend the null row and project it like any other row.
        padded = torch.cat([rows.new_zeros(steps, batch, 1, rows.shape[-1]), rows], dim=2)
        flat = padded.reshape(-1, rows.shape[-1])
        keys = _project(flat, self.input_key).mul(scale).view(steps, batch, -1, heads, key_size)
        values = _project(flat, self.input_value).view(steps, batch, -1, heads, self.input_value_size)
        return keys, values, self.weight_ih

    def _step_weights(self, weight_ih: Tensor) -> StepWeights:
        """The weights in the step's layout (:class:`rims_rl.step.StepWeights`), made once per call, with
        ``weight_ih`` the cells' input weights over the values the step reads (see :meth:`_input_side`)."""
        units = self.num_units
        hidden_weight, bias_ih = self.weight_hh, None
        if self.cell == "lstm":
            hidden_bias = self.bias_hh + self.bias_ih
        else:  # the GRU's reset gate scales the hidden side only, so its input bias stays apart
            hidden_bias, bias_ih = self.bias_hh, self.bias_ih.unsqueeze(1)
        if self.input_attention:
            # The cell's hidden-side projection and the input queries both read h_{t-1}: one bmm.
            hidden_weight = torch.cat([self.weight_hh, self.input_query], dim=-1)
            hidden_bias = torch.cat([hidden_bias, hidden_bias.new_zeros(units, self.input_query.shape[-1])], dim=-1)
        comm = (None, None, None)
        if self.communication:
            # 1/sqrt(key size) folded into the query columns of the q/k/v projection.
            split = self.comm_heads * self.comm_key_size
            scale = torch.ones(self.comm_qkv.shape[-1], dtype=self.comm_qkv.dtype, device=self.comm_qkv.device)
            scale[:split] = 1.0 / math.sqrt(self.comm_key_size)
            comm = (self.comm_qkv * scale, self.comm_output, self.comm_output_bias.unsqueeze(1))
        return StepWeights(hidden_weight, hidden_bias.unsqueeze(1), weight_ih, bias_ih, *comm)

    def _lstm_layout(self, outputs: Tensor, h: Tensor, c: Tensor):
        """Unit-major outputs ``(T, K, B, U)`` and ``h, c (K, B, U)`` back in nn.LSTM's layout."""
        steps, _, batch = outputs.shape[:3]
        flat = (1, batch, self.hidden_size)
        output = outputs.permute(0, 2, 1, 3).reshape(steps, batch, self.hidden_size)
        return output, (h.transpose(0, 1).reshape(flat), c.transpose(0, 1).reshape(flat))
