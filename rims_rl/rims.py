"""Recurrent Independent Mechanisms (Goyal et al., ICLR 2021, Section 2) as one batched torch module.

Pure torch: nothing here knows about SB3 or gymnasium.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rims_rl import rims_loop

__all__ = ["RIMs", "RIMsDetails"]

_CELL_GATES = {"lstm": 4, "gru": 3}


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


# Largest batch for which the one-row input path precomputes the cells' input projections.
_PRECOMPUTE_MAX_BATCH = 16

# Largest batch for which weight gradients are deferred to one matmul per call (see _SharedWeight);
# with more rows, each step's weight gradient is an efficient matmul of its own.
_DEFER_MAX_BATCH = 16


def _pad_rows(flat: Tensor) -> Tensor:
    """Zero-pad a (rows, features) matrix to at least ``_MIN_ROWS`` rows."""
    if flat.shape[0] >= _MIN_ROWS:
        return flat
    return torch.cat([flat, flat.new_zeros(_MIN_ROWS - flat.shape[0], flat.shape[1])])


def _project(flat: Tensor, weight: Tensor) -> Tensor:
    """``flat @ weight`` with the row padding that keeps results independent of the row count."""
    return (_pad_rows(flat) @ weight)[: flat.shape[0]]


def _value_gates(values: Tensor, weight_ih: Tensor, heads: int, steps: int, batch: int) -> Tensor:
    """Each head's share of the cells' input projection, ``(heads, T, B, K, G)``, from the padded
    values ``(rows, heads * value)``, for all steps in one bmm: (heads, rows, value) x
    (heads, value, K * G). Under eager autograd this spares each step a product with ``weight_ih``
    and its weight gradient; for small batches only, where the per-step tensors stay small."""
    units, value = weight_ih.shape[0], values.shape[-1] // heads
    per_head = weight_ih.view(units, heads, value, -1).permute(1, 2, 0, 3).flatten(2)
    gates = torch.bmm(values.view(-1, heads, value).transpose(0, 1), per_head)
    return gates[:, : steps * batch].view(heads, steps, batch, units, -1)


class _Stash:
    """Inputs and output gradients of one weight's per-step products, gathered during one backward."""

    def __init__(self) -> None:
        self.inputs: list[Tensor] = []
        self.grads: list[Tensor] = []


class _SharedWeight(torch.autograd.Function):
    """Identity on ``(weight, bias)`` whose backward computes their gradients from every step at once.

    The time loop uses a weight at every step. Plain autograd would form a full-size weight gradient
    per step from a few batch rows (an outer product: memory-bound) and add it up; instead, each
    step's product only records its input and output gradient, and this node, which autograd runs
    after all of them, does one batched matmul over all steps.
    """

    @staticmethod
    def forward(ctx, stash: _Stash, weight: Tensor, bias: Tensor):
        ctx.stash = stash
        return weight.view_as(weight), bias.view_as(bias)

    @staticmethod
    def backward(ctx, grad_weight: Tensor, grad_bias: Tensor):
        stash = ctx.stash
        if stash.inputs:
            inputs, grads = torch.cat(stash.inputs, dim=1), torch.cat(stash.grads, dim=1)
            stash.inputs, stash.grads = [], []
            grad_weight = torch.baddbmm(grad_weight, inputs.transpose(1, 2), grads)
            grad_bias = grad_bias + grads.sum(1, keepdim=True)
        return None, grad_weight, grad_bias


class _StepProduct(torch.autograd.Function):
    """``bias + x @ weight`` for one step, leaving the weight and bias gradients to :class:`_SharedWeight`."""

    @staticmethod
    def forward(ctx, stash: _Stash, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.stash = stash
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias, x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        ctx.stash.inputs.append(x)
        ctx.stash.grads.append(grad)
        grad_x = torch.bmm(grad, weight.transpose(1, 2)) if ctx.needs_input_grad[1] else None
        return None, grad_x, None, None


class _Product:
    """Per-step ``bias + x @ weight`` with unit-major ``x (K, B, in)``, ``weight (K, in, out)``,
    ``bias (K, 1, out)``. With ``defer`` and under autograd, the weight and bias gradients are
    computed once per call (see :class:`_SharedWeight`); the values are those of ``torch.baddbmm``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, defer: bool = True) -> None:
        if bias is None:
            bias = weight.new_zeros(weight.shape[0], 1, weight.shape[-1])
        self.stash = None
        if defer and torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad):
            self.stash = _Stash()
            weight, bias = _SharedWeight.apply(self.stash, weight, bias)
        self.weight, self.bias = weight, bias

    def __call__(self, x: Tensor) -> Tensor:
        if self.stash is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return _StepProduct.apply(self.stash, x, self.weight, self.bias)


def _dropout(x: Tensor, p: float, training: bool) -> Tensor:
    return F.dropout(x, p, True) if training and p > 0 else x


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

    Shape:
        - ``x``: ``(T, B, input_size)``, or ``(T, B, N, input_size)`` for an input set of ``N`` rows.
        - ``state``: ``(h, c)``, each ``(1, B, num_units * unit_size)``; ``None`` means zeros. Unit
          ``k`` owns the slice ``[k * unit_size, (k + 1) * unit_size)``.
        - ``episode_starts``: ``(T, B)``; a nonzero entry zeroes that batch entry's state right
          before step ``t`` (the convention of sb3-contrib's recurrent policies).
        - output: ``(T, B, num_units * unit_size)``, the ``h`` of every step.

    Initialisation:
        Cell weights and biases are uniform in ``+-1/sqrt(unit_size)`` (as in ``nn.LSTM``); every
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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if input_value_size is None:
            input_value_size = unit_size
        for name, value in [
            ("input_size", input_size),
            ("unit_size", unit_size),
            ("num_units", num_units),
            ("input_heads", input_heads),
            ("input_key_size", input_key_size),
            ("input_value_size", input_value_size),
            ("comm_heads", comm_heads),
            ("comm_key_size", comm_key_size),
            ("comm_value_size", comm_value_size),
        ]:
            _check_positive_int(name, value)
        if isinstance(k_active, bool) or not isinstance(k_active, int) or not 1 <= k_active <= num_units:
            raise ValueError(f"k_active must be an integer in [1, num_units={num_units}], got {k_active!r}")
        if cell not in _CELL_GATES:
            raise ValueError(f"cell must be one of {sorted(_CELL_GATES)}, got {cell!r}")
        _check_probability("input_dropout", input_dropout)
        _check_probability("comm_dropout", comm_dropout)

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
        # nn.LSTM's attribute names, which sb3-contrib reads to size its state buffers.
        self.hidden_size = num_units * unit_size
        self.num_layers = 1

        factory = {"device": device, "dtype": dtype}
        units, gates = num_units, _CELL_GATES[cell] * unit_size
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

    def reset_parameters(self) -> None:
        """Re-draw every weight with the documented initialisation."""
        bound = 1.0 / math.sqrt(self.unit_size)
        for weight in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            nn.init.uniform_(weight, -bound, bound)
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

    def _run(self, x: Tensor, state, episode_starts, record: bool):
        self._check_inputs(x, state, episode_starts)
        steps, batch = x.shape[:2]
        units, size = self.num_units, self.unit_size
        if state is None:
            state = self.initial_state(batch, x.device, x.dtype)
        # Unit-major layout (K, B, unit_size) so every per-unit projection is one bmm.
        h = state[0].reshape(batch, units, size).transpose(0, 1)
        c = state[1].reshape(batch, units, size).transpose(0, 1)
        keep, reset_steps = None, ()
        if episode_starts is not None:
            keep = (1.0 - episode_starts.to(x.dtype)).unsqueeze(-1)  # (T, B, 1); indexed only at reset steps
            # Multiplying by a mask of ones would only cost time (in training, resets fall on step 0).
            reset_steps = set(episode_starts.ne(0).any(1).nonzero().flatten().tolist())

        gates = self.weight_hh.shape[-1]
        # The cell's hidden-side projection and the input queries both read h_{t-1}: one bmm.
        hidden_weight = self.weight_hh
        hidden_bias = self.bias_hh + self.bias_ih if self.cell == "lstm" else self.bias_hh
        if self.input_attention:
            hidden_weight = torch.cat([self.weight_hh, self.input_query], dim=-1)
            query_bias = hidden_bias.new_zeros(units, self.input_query.shape[-1])
            hidden_bias = torch.cat([hidden_bias, query_bias], dim=-1)
        if not record and self._fusable(x):
            return self._run_fused(x, h, c, reset_steps, keep, hidden_weight, hidden_bias.unsqueeze(1))

        read_input = self._input_reader(x, record)
        defer = batch <= _DEFER_MAX_BATCH
        project_hidden = _Product(hidden_weight, hidden_bias.unsqueeze(1), defer)
        communicate = self._communicator(defer) if self.communication else None

        outputs, actives, attentions = [], [], []
        for t in range(steps):
            if t in reset_steps:
                h, c = h * keep[t], c * keep[t]
            projected = project_hidden(h)
            input_gates, p_null, attention = read_input(t, projected[..., gates:])
            active = self._select(p_null)
            h_cell, c_cell = self._cell_step(input_gates, projected[..., :gates], h, c)
            if active is None:
                h_mix, c = h_cell, c_cell
            else:
                mask = active.unsqueeze(-1)
                h_mix, c = torch.where(mask, h_cell, h), torch.where(mask, c_cell, c)
            if self.communication:
                h_comm = h_mix + communicate(h_mix)
                h = h_comm if active is None else torch.where(mask, h_comm, h)
            else:
                h = h_mix
            outputs.append(h)
            if record:
                if active is None:
                    active = torch.ones(units, batch, dtype=torch.bool, device=x.device)
                actives.append(active)
                attentions.append(attention)

        output, final = self._lstm_layout(torch.stack(outputs), h, c)
        details = None
        if record:
            details = RIMsDetails(
                active=torch.stack(actives).transpose(1, 2),
                input_attention=torch.stack(attentions).transpose(1, 2),
            )
        return output, final, details

    def _input_reader(self, x: Tensor, record: bool):
        """Precompute the state-independent input side for all steps; return a per-step reader.

        The reader maps ``(t, queries (K, B, heads * key))`` to ``(cell input gates (K, B, G),
        null probability averaged over heads (K, B) or None, attention (K, B, heads, N + 1))``.
        Precomputed tensors are unbound into per-step views once: indexing them per step would
        make autograd scatter a full-size zero gradient at every step.
        """
        steps, batch = x.shape[:2]
        units, heads = self.num_units, self.input_heads
        rows = x if x.dim() == 4 else x.unsqueeze(2)

        if not self.input_attention:
            # Ablation: each unit reads the (mean) input directly; its projection is state-free.
            flat = _pad_rows(rows.mean(2).reshape(steps * batch, -1))
            gates = torch.einsum("nd,kdg->nkg", flat, self.weight_ih)[: steps * batch]
            gates = gates.view(steps, batch, units, -1).transpose(1, 2).unbind(0)
            empty = x.new_zeros(units, batch, heads, 0)
            return lambda t, queries: (gates[t], None, empty)

        key_size, value_size = self.input_key_size, self.input_value_size
        scale = 1.0 / math.sqrt(key_size)
        if rows.shape[2] == 1:
            keys, values = self._row_projections(x)
            keys = keys.unbind(0)
            value_gates = None
            if batch <= _PRECOMPUTE_MAX_BATCH:
                value_gates = _value_gates(values, self.weight_ih, heads, steps, batch).unbind(1)
            else:
                values = values[: steps * batch].view(steps, batch, heads, value_size).unbind(0)

            def read_one(t: int, queries: Tensor):
                scores = (queries.view(units, batch, heads, key_size) * keys[t]).sum(-1)
                p_input = torch.sigmoid(scores)
                weights = _dropout(p_input, self.input_dropout, self.training)
                if value_gates is None:
                    readout = (weights.unsqueeze(-1) * values[t]).view(units, batch, heads * value_size)
                    input_gates = torch.bmm(readout, self.weight_ih)
                else:
                    input_gates = (weights.permute(2, 1, 0).unsqueeze(-1) * value_gates[t]).sum(0).transpose(0, 1)
                attention = None
                if record:
                    attention = torch.stack([torch.sigmoid(-scores), p_input], dim=-1)
                return input_gates, 1.0 - p_input.detach().mean(-1), attention

            return read_one

        # An input set: prepend the null row and project it like any other row.
        padded = torch.cat([rows.new_zeros(steps, batch, 1, rows.shape[-1]), rows], dim=2)
        flat = padded.reshape(steps * batch * padded.shape[2], -1)
        keys = _project(flat, self.input_key).view(steps, batch, -1, heads, key_size).unbind(0)
        values = _project(flat, self.input_value).view(steps, batch, -1, heads, value_size).unbind(0)

        def read_set(t: int, queries: Tensor):
            scores = torch.einsum("kbhd,bnhd->kbhn", queries.view(units, batch, heads, key_size), keys[t])
            attention = torch.softmax(scores * scale, dim=-1)
            weights = _dropout(attention, self.input_dropout, self.training)
            readout = torch.einsum("kbhn,bnhv->kbhv", weights, values[t]).reshape(units, batch, -1)
            return torch.bmm(readout, self.weight_ih), attention.detach()[..., 0].mean(-1), attention

        return read_set

    def _row_projections(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys ``(T, B, heads, key)``, scaled by 1/sqrt(key), and values ``(rows, heads * value)``
        (rows padded, see ``_pad_rows``) of a one-row input. Its softmax against the null row (score
        exactly 0) is a sigmoid, and its keys and values do not depend on the state, so they are
        computed before the loop."""
        steps, batch = x.shape[:2]
        flat = _pad_rows(x.reshape(steps * batch, -1))
        keys = (flat @ self.input_key)[: steps * batch].mul(1.0 / math.sqrt(self.input_key_size))
        return keys.view(steps, batch, self.input_heads, self.input_key_size), flat @ self.input_value

    def _fusable(self, x: Tensor) -> bool:
        """Whether :mod:`rims_rl.rims_loop` covers this call (see its docstring)."""
        dropout = self.training and (self.input_dropout > 0 or (self.communication and self.comm_dropout > 0))
        one_row = x.dim() == 3 or x.shape[2] == 1
        return (
            self.cell == "lstm"
            and self.input_attention
            and one_row
            and not dropout
            and (x.shape[1] <= _PRECOMPUTE_MAX_BATCH)
        )

    def _run_fused(self, x: Tensor, h, c, reset_steps, keep, hidden_weight: Tensor, hidden_bias: Tensor):
        batch = x.shape[1]
        keys, values = self._row_projections(x)
        comm = (None, None, None)
        if self.communication:
            comm = (self._comm_qkv_scaled(), self.comm_output, self.comm_output_bias.unsqueeze(1))
        tensors = (keys, values, self.weight_ih, h.contiguous(), c.contiguous(), hidden_weight, hidden_bias, *comm)
        spec = rims_loop.LoopSpec(self, batch)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            outputs, h, c = rims_loop.FusedLoop.apply(spec, reset_steps, keep, *tensors)
        else:
            outputs, h, c, _ = rims_loop.run_loop(spec, tensors, reset_steps, keep, save=False)
        output, final = self._lstm_layout(outputs, h, c)
        return output, final, None

    def _lstm_layout(self, outputs: Tensor, h: Tensor, c: Tensor):
        """Unit-major outputs ``(T, K, B, U)`` and ``h, c (K, B, U)`` back in nn.LSTM's layout."""
        steps, _, batch = outputs.shape[:3]
        flat = (1, batch, self.hidden_size)
        output = outputs.permute(0, 2, 1, 3).reshape(steps, batch, self.hidden_size)
        return output, (h.transpose(0, 1).reshape(flat), c.transpose(0, 1).reshape(flat))

    def _comm_qkv_scaled(self) -> Tensor:
        """The communication q/k/v weight with 1/sqrt(key size) folded into the query columns."""
        split = self.comm_heads * self.comm_key_size
        scale = torch.ones(self.comm_qkv.shape[-1], dtype=self.comm_qkv.dtype, device=self.comm_qkv.device)
        scale[:split] = 1.0 / math.sqrt(self.comm_key_size)
        return self.comm_qkv * scale

    def _select(self, p_null: Tensor | None) -> Tensor | None:
        """Bool mask (K, B) of the k_active units with the least null attention; None if all are."""
        if p_null is None or self.k_active == self.num_units:
            return None
        return rims_loop.select_active(p_null, self.k_active)

    def _cell_step(self, input_gates: Tensor, hidden_gates: Tensor, h: Tensor, c: Tensor):
        if self.cell == "lstm":
            gates = input_gates + hidden_gates
            i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)
            c_new = torch.addcmul(f * c, i, torch.tanh(gates[..., 2 * self.unit_size : 3 * self.unit_size]))
            return o * torch.tanh(c_new), c_new
        ir, iz, i_n = (input_gates + self.bias_ih.unsqueeze(1)).chunk(3, dim=-1)
        hr, hz, h_n = hidden_gates.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n), c

    def _communicator(self, defer: bool):
        """Per-step function of h (K, B, unit_size) -> residual: each unit attends over all units."""
        heads, key_size, value_size = self.comm_heads, self.comm_key_size, self.comm_value_size
        split = heads * key_size
        splits = [split, split, heads * value_size]
        project_qkv = _Product(self._comm_qkv_scaled(), defer=defer)
        project_output = _Product(self.comm_output, self.comm_output_bias.unsqueeze(1), defer)

        def communicate(h: Tensor) -> Tensor:
            units, batch = h.shape[:2]
            queries, keys, values = project_qkv(h).split(splits, dim=-1)
            # Broadcast products instead of batched matmuls: the unit-major layout needs no copies,
            # and with few units they are as cheap as the matmuls.
            queries = queries.view(units, 1, batch, heads, key_size)
            keys = keys.view(1, units, batch, heads, key_size)
            values = values.view(1, units, batch, heads, value_size)
            scores = (queries * keys).sum(-1, keepdim=True)
            attention = _dropout(torch.softmax(scores, dim=1), self.comm_dropout, self.training)
            read = (attention * values).sum(1).reshape(units, batch, heads * value_size)
            update, gate = project_output(read).chunk(2, dim=-1)
            return torch.sigmoid(gate) * torch.tanh(update)

        return communicate
