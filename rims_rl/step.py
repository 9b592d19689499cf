"""One RIMs step (Goyal et al., ICLR 2021, Section 2): the single definition every path runs or is checked against.

:func:`rims_step` is the paper's step, for every batch entry and every unit at once, in the order the paper
gives it:

1. **Input attention.** Each unit queries the input set with a projection of its own state. The input set
   has an all-zero *null* row first; keys and values are bias-free, so the null row's key and value are
   exactly zero and its score is exactly 0.
2. **Selection.** The ``k_active`` units that put the least attention probability on the null row,
   averaged over heads, are active (hard top-k; ties go to the lower unit index).
3. **Independent dynamics.** Every unit's own cell (LSTM or GRU) reads its attention read-out; active
   units take the new state, inactive ones keep ``h`` and ``c`` bit for bit.
4. **Communication.** Active units attend over all units' states and add the bounded residual
   ``sigmoid(gate) * tanh(update)`` to their ``h``.

The variants are arguments (:class:`StepSpec`): no input attention (every unit reads the input, all are
active), no communication, ``k_active == num_units``, LSTM or GRU cells, dropout masks.

Who runs it: :mod:`rims_rl.loop`'s autograd loop calls it once per step and lets autograd differentiate it;
its fused loop calls it with ``save=True`` and differentiates it with :func:`step_backward`, the hand-written
backward beside it (tests compare the two on this function); the compiled CPU loop
(``csrc/rims_loop.cpp``) does the same arithmetic and is tested against this function too.

Layout: unit-major, ``h``, ``c`` ``(K, B, U)``, so each per-unit projection is one batched matmul over the
units. Everything state-independent (keys and values of the input rows, the weight layout) is prepared
once per call by :class:`rims_rl.RIMs` and handed in as :class:`StepWeights` and one step's
:class:`StepInputs`. Pure torch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["StepInputs", "StepSpec", "StepWeights", "dropout_mask", "rims_step", "select_active", "step_backward"]

CELL_GATES = {"lstm": 4, "gru": 3}


def init_forget_bias(bias_ih: Tensor, bias_hh: Tensor, hidden_size: int, value: float) -> None:
    """Start an LSTM's forget gate at ``value``: the forget slice of ``bias_ih``'s last dimension (gates laid
    out (i, f, g, o), ``hidden_size`` each, as in ``nn.LSTM``) set to ``value``, ``bias_hh``'s to 0. For one
    LSTM (``(4H,)``) or one per unit (``(K, 4H)``)."""
    forget = slice(hidden_size, 2 * hidden_size)
    with torch.no_grad():
        bias_ih[..., forget] = value
        bias_hh[..., forget] = 0.0


class StepSpec(NamedTuple):
    """The sizes and variant of a RIMs module, everything :func:`rims_step` needs besides tensors."""

    units: int  # K
    unit_size: int  # U
    k_active: int
    cell: str  # "lstm" or "gru"
    input_attention: bool
    input_heads: int
    input_key_size: int
    communication: bool
    comm_heads: int
    comm_key_size: int
    comm_value_size: int

    @property
    def gates(self) -> int:
        return CELL_GATES[self.cell] * self.unit_size

    @property
    def selects(self) -> bool:
        """Whether step 2 leaves some units inactive (not with k_active == K, nor without input attention)."""
        return self.input_attention and self.k_active < self.units


class StepWeights(NamedTuple):
    """A module's weights in the layout of one call, unit-major.

    - ``hidden_weight`` ``(K, U, G + H dk)``, ``hidden_bias`` ``(K, 1, G + H dk)``: the cells' hidden-side
      projection and the input queries side by side, since both read ``h_{t-1}`` (one batched matmul).
      The LSTM's two biases are summed here; the query columns have no bias.
    - ``weight_ih`` ``(K, R, G)``: each cell's input weights over its read-out of width ``R``;
      ``bias_ih`` ``(K, 1, G)``, used by the GRU only (its reset gate scales the hidden side alone).
    - ``comm_qkv`` ``(K, U, Hc (2 ck + cv))`` with ``1/sqrt(ck)`` folded into the query columns;
      ``comm_output`` ``(K, Hc cv, 2U)`` and ``comm_output_bias`` ``(K, 1, 2U)``; all None without
      communication.
    """

    hidden_weight: Tensor
    hidden_bias: Tensor
    weight_ih: Tensor
    bias_ih: Tensor | None
    comm_qkv: Tensor | None
    comm_output: Tensor | None
    comm_output_bias: Tensor | None


class StepInputs(NamedTuple):
    """One step's input rows, projected (they do not depend on the state).

    - One input row (``rows=1``): ``keys`` ``(B, H, dk)`` already scaled by ``1/sqrt(dk)``, ``values``
      ``(B, R)``, head-major (``H`` blocks). The null row is implicit: its key is zero, so the softmax over
      (null, row) of a head's score ``s`` is ``(sigmoid(-s), sigmoid(s))`` and the read-out is
      ``sigmoid(s)`` times the row's value.
    - An input set of ``N`` rows: ``keys`` ``(B, N + 1, H, dk)`` scaled, ``values`` ``(B, N + 1, H, dv)``,
      the null row (exact zeros) first.
    - No input attention: ``keys`` None, ``values`` ``(B, D)`` the input itself (the mean of a set's rows).
    """

    keys: Tensor | None
    values: Tensor


class StepMasks(NamedTuple):
    """Inverted-dropout masks (0 or ``1/(1-p)``) for one step, or None for no dropout: on the input
    attention probabilities (shape of the attention over real rows, ``(K, B, H)`` for one row,
    ``(K, B, H, N + 1)`` for a set) and on the communication attention ``(K, K, B, Hc, 1)``."""

    input: Tensor | None = None
    comm: Tensor | None = None


NO_DROPOUT = StepMasks()


def dropout_mask(like: Tensor, p: float) -> Tensor:
    """The mask ``torch.nn.functional.dropout(x, p)`` multiplies ``x`` by, drawn as it draws it (same
    generator, same numbers): the step takes masks as arguments, so that whoever runs it decides when
    they are drawn."""
    return torch.empty_like(like).bernoulli_(1.0 - p).div_(1.0 - p)


def select_active(p_null: Tensor, k_active: int) -> Tensor:
    """Bool mask ``(K, B)`` of the ``k_active`` units with the least null attention ``p_null`` ``(K, B)``.
    A stable sort makes ties go to the lower unit index, on every device."""
    order = torch.sort(p_null, dim=0, stable=True).indices[:k_active]
    return torch.zeros_like(p_null, dtype=torch.bool).scatter_(0, order, True)


def rims_step(
    spec: StepSpec,
    weights: StepWeights,
    inputs: StepInputs,
    h: Tensor,
    c: Tensor,
    masks: StepMasks = NO_DROPOUT,
    details: bool = False,
    save: bool = False,
) -> tuple[Tensor, Tensor, dict[str, Tensor | None]]:
    """One step from ``(h, c)`` ``(K, B, U)`` (after any episode reset).

    Returns the new ``h, c`` and a dict with ``active`` (``(K, B)`` bool, None when all units are);
    with ``details`` also ``attention`` (``(K, B, H, N + 1)``, the null row first; ``(K, B, H, 0)``
    without input attention); with ``save`` also what :func:`step_backward` needs (LSTM cells, input
    attention): ``p`` is each head's attention on the row ``(K, B, H)``, or over a set's rows ``(K, B, H, N + 1)``.
    """
    units, size, gates = spec.units, spec.unit_size, spec.gates
    batch = h.shape[1]
    projected = torch.baddbmm(weights.hidden_bias, h, weights.hidden_weight)
    hidden_gates, queries = projected[..., :gates], projected[..., gates:]

    # 1. Input attention over the null row and the input rows.
    if not spec.input_attention:
        p_input = attention = None
        readout = inputs.values.expand(units, *inputs.values.shape)
        p_null = None
    elif inputs.keys.dim() == 3:  # one row: softmax over (null, row) is sigmoid of the row's score
        heads = spec.input_heads
        queries = queries.view(units, batch, heads, spec.input_key_size)
        scores = (queries * inputs.keys).sum(-1)  # (K, B, H)
        p_input = torch.sigmoid(scores)
        attention = torch.stack([torch.sigmoid(-scores), p_input], dim=-1) if details else None
        p_null = 1.0 - p_input.detach().mean(-1)
        weighted = p_input if masks.input is None else p_input * masks.input
        readout = (weighted.unsqueeze(-1) * inputs.values.view(1, batch, heads, -1)).view(units, batch, -1)
    else:  # a set: the null row (zero key, zero value) takes part in each head's softmax
        heads = spec.input_heads
        queries = queries.view(units, batch, heads, spec.input_key_size)
        scores = torch.einsum("kbhd,bnhd->kbhn", queries, inputs.keys)
        p_input = attention = torch.softmax(scores, dim=-1)
        p_null = attention.detach()[..., 0].mean(-1)
        weighted = attention if masks.input is None else attention * masks.input
        readout = torch.einsum("kbhn,bnhv->kbhv", weighted, inputs.values).reshape(units, batch, -1)

    # 2. Selection: the units that attend least to the null row.
    active = select_active(p_null, spec.k_active) if spec.selects else None

    # 3. Independent dynamics: each unit's own cell; inactive units keep h and c.
    saved: dict[str, Tensor | None] = {}
    if spec.cell == "lstm":
        pre = torch.baddbmm(hidden_gates, readout, weights.weight_ih)
        act = torch.sigmoid(pre)  # one sigmoid over all four gates; the candidate's slot goes unused
        i, f, _, o = act.chunk(4, dim=-1)
        g = torch.tanh(pre[..., 2 * size : 3 * size])
        c_cell = torch.addcmul(f * c, i, g)
        tanh_c = torch.tanh(c_cell)
        h_cell = o * tanh_c
        if save:
            saved |= {"c": c, "q": queries, "p": p_input, "readout": readout, "act": act, "g": g, "tanh_c": tanh_c}
    else:
        input_gates = torch.baddbmm(weights.bias_ih, readout, weights.weight_ih)
        ir, iz, i_n = input_gates.chunk(3, dim=-1)
        hr, hz, h_n = hidden_gates.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * h_n)
        h_cell, c_cell = n + z * (h - n), c
    if active is None:
        h_mix, c_next = h_cell, c_cell
    else:
        keep = active.unsqueeze(-1)
        h_mix, c_next = torch.where(keep, h_cell, h), torch.where(keep, c_cell, c)

    # 4. Communication: active units read from all units; a bounded residual.
    h_next = h_mix
    if spec.communication:
        heads, key, value = spec.comm_heads, spec.comm_key_size, spec.comm_value_size
        qkv = torch.bmm(h_mix, weights.comm_qkv)
        q, k, v = qkv.split([heads * key, heads * key, heads * value], dim=-1)
        # Broadcast products rather than batched matmuls: the unit-major layout needs no copies, and with
        # few units they cost as little.
        comm_scores = (q.view(units, 1, batch, heads, key) * k.view(1, units, batch, heads, key)).sum(-1, keepdim=True)
        comm_attention = torch.softmax(comm_scores, dim=1)  # (query unit, key unit, B, heads, 1)
        weighted = comm_attention if masks.comm is None else comm_attention * masks.comm
        read = (weighted * v.view(1, units, batch, heads, value)).sum(1).view(units, batch, -1)
        update, gate = torch.baddbmm(weights.comm_output_bias, read, weights.comm_output).chunk(2, dim=-1)
        sig, tanh_u = torch.sigmoid(gate), torch.tanh(update)
        residual = sig * tanh_u
        h_next = h_mix + (residual if active is None else residual * active.unsqueeze(-1))
        if save:
            saved |= {"qkv": qkv, "comm_attention": comm_attention, "read": read, "sig": sig, "tanh_u": tanh_u}
    if save:
        saved |= {"h_mix": h_mix, "mask": None if active is None else active.unsqueeze(-1)}
    if details:
        saved["input_attention"] = (
            attention if attention is not None else h.new_zeros(units, batch, spec.input_heads, 0)
        )
    return h_next, c_next, {"active": active, **saved}


def step_factors(spec: StepSpec, saved: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every local derivative :func:`step_backward` multiplies by, from :func:`rims_step`'s saved tensors
    (of one step, or stacked over steps), with the active mask folded in so that the backward does as few
    small ops per step as it can. The compiled forward forms the same tensors as it goes."""
    i, f, _, o = saved["act"].chunk(4, dim=-1)
    g, c, tanh_c = saved["g"], saved["c"], saved["tanh_c"]
    mask = saved["mask"].to(c.dtype) if saved.get("mask") is not None else torch.ones_like(c[..., :1])
    d_tanh_c = 1.0 - tanh_c * tanh_c
    factors = {
        "mask": mask,
        "unmask": 1.0 - mask,
        "f": f.contiguous(),
        # d c_new / d h_cell through h_cell = o tanh(c_new), for active units only.
        "cell_to_c": mask * o * d_tanh_c,
        # d pre-activation of (i, f, g, o) per unit of (d c_new, d c_new, d c_new, d h_cell).
        "pre": torch.stack(
            [g * i * (1.0 - i), c * f * (1.0 - f), i * (1.0 - g * g), mask * tanh_c * o * (1.0 - o)], -2
        ),
    }
    if saved["p"].dim() == saved["c"].dim():  # one row: the slope of each head's sigmoid
        factors["p_slope"] = saved["p"] * (1.0 - saved["p"])
    else:  # a set: the softmax's backward needs the attention itself
        factors["attention"] = saved["p"]
    if spec.communication:
        sig, tanh_u = saved["sig"], saved["tanh_u"]
        # d (update, gate) of d h_next through mask * sigmoid(gate) * tanh(update).
        out = torch.stack([sig * (1.0 - tanh_u * tanh_u), tanh_u * sig * (1.0 - sig)], -2)
        factors["out"] = out * mask.unsqueeze(-1)
    return factors


def step_backward(
    spec: StepSpec,
    dh: Tensor,
    dc: Tensor,
    step: dict[str, Tensor],
    inputs: StepInputs,
    weights_t: StepWeights,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The hand-written backward of :func:`rims_step` for LSTM cells with input attention (one row or a set)
    and no dropout.

    ``dh, dc`` after the step -> before it (before any reset), and the step's gradients of the hidden
    projection's output (``projected``), the input scores (``scores``), the read-out (``readout``) and,
    with communication, of the comm projections (``qkv``, ``out``); weight gradients are formed from
    those over all steps at once by the caller. ``step`` holds this step's :func:`step_factors` (with a set,
    the input attention as ``attention``) and the saved ``qkv`` and ``comm_attention``; ``weights_t`` the
    weights transposed (last two dimensions). The scores'
    gradient is ``(K, B, H)`` for one row, ``(K, B, H, N + 1)`` for a set.
    """
    units, batch, size = spec.units, dh.shape[1], spec.unit_size
    grads = {}
    if spec.communication:
        heads, key, value = spec.comm_heads, spec.comm_key_size, spec.comm_value_size
        split = heads * key
        d_out = (dh.unsqueeze(-2) * step["out"]).view(units, batch, 2 * size)
        d_read = torch.bmm(d_out, weights_t.comm_output).view(units, 1, batch, heads, value)
        q, k, v = step["qkv"].split([split, split, heads * value], dim=-1)
        attention = step["comm_attention"]
        d_attention = (d_read * v.view(1, units, batch, heads, value)).sum(-1, keepdim=True)
        d_scores = attention * (d_attention - (attention * d_attention).sum(1, keepdim=True))
        d_qkv = torch.cat(
            [
                (d_scores * k.view(1, units, batch, heads, key)).sum(1).view(units, batch, split),
                (d_scores * q.view(units, 1, batch, heads, key)).sum(0).view(units, batch, split),
                (attention * d_read).sum(0).view(units, batch, heads * value),
            ],
            dim=-1,
        )
        d_mix = torch.baddbmm(dh, d_qkv, weights_t.comm_qkv)
        grads["out"], grads["qkv"] = d_out, d_qkv
    else:
        d_mix = dh
    d_c_new = torch.addcmul(dc * step["mask"], d_mix, step["cell_to_c"])
    # (d c_new, d c_new, d c_new, d h_cell) against the gates (i, f, g, o), in one op.
    output_gate = torch.arange(4, device=dh.device).eq(3).view(1, 1, 4, 1)
    sources = torch.where(output_gate, d_mix.unsqueeze(-2), d_c_new.unsqueeze(-2))
    d_pre = (sources * step["pre"]).view(units, batch, 4 * size)
    dc = torch.addcmul(dc * step["unmask"], d_c_new, step["f"])
    d_readout = torch.bmm(d_pre, weights_t.weight_ih)
    heads = spec.input_heads
    if inputs.keys.dim() == 3:  # one row: p = sigmoid(score)
        per_head = d_readout.view(units, batch, heads, -1) * inputs.values.view(1, batch, heads, -1)
        d_scores_in = per_head.sum(-1) * step["p_slope"]
        d_queries = d_scores_in.unsqueeze(-1) * inputs.keys
    else:  # a set: each head's softmax over the rows
        attention = step["attention"]
        d_attention = torch.einsum("kbhv,bnhv->kbhn", d_readout.view(units, batch, heads, -1), inputs.values)
        d_scores_in = attention * (d_attention - (attention * d_attention).sum(-1, keepdim=True))
        d_queries = torch.einsum("kbhn,bnhd->kbhd", d_scores_in, inputs.keys)
    d_projected = torch.cat([d_pre, d_queries.reshape(units, batch, -1)], dim=-1)
    dh = torch.baddbmm(d_mix * step["unmask"], d_projected, weights_t.hidden_weight)
    grads["projected"], grads["scores"], grads["readout"] = d_projected, d_scores_in, d_readout
    return dh, dc, grads
