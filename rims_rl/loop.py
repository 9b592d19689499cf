"""The RIMs time loops: :func:`rims_rl.step.rims_step` over ``T`` steps, differentiated two ways.

- :func:`autograd_loop` calls the step once per step and lets autograd record it. It covers every
  variant (input sets, GRU cells, no input attention, live dropout) and can return the per-step
  details (active units, input attention).
- :class:`FusedLoop` is the whole loop as one autograd node, for LSTM cells reading one input row or an
  input set through attention, with no live dropout: what recurrent PPO and A2C run, acting and training, at any batch
  size. The forward runs the same step unrecorded, keeping what the backward needs; the backward is
  :func:`rims_rl.step.step_backward` step by step, with every local derivative formed for all steps
  before the loop and every product the recurrence does not need (weight gradients, the gradients of
  the keys and values) formed after it, over all steps in one batched matmul each. At a few rows per
  step the loop is a long chain of small ops; recording fewer of them is most of the speed.
  On CPU both directions run compiled (:mod:`rims_rl.native`, ``csrc/rims_loop.cpp``: the same
  arithmetic in the same step-major layouts) when the extension builds, in Python otherwise.

Neither loop reads a tensor's values on the host: resets are a multiplication by the keep mask
``1 - episode_starts`` at every step (exact for the entries not reset), so a call never waits for a
device, and a CUDA call could be captured as a graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rims_rl import native
from rims_rl.step import (
    NO_DROPOUT,
    StepInputs,
    StepMasks,
    StepSpec,
    StepWeights,
    dropout_mask,
    rims_step,
    step_backward,
    step_factors,
)

__all__ = ["FusedLoop", "autograd_loop", "fused_loop"]


def _step_inputs(keys: Tensor | None, values: Tensor) -> list[StepInputs]:
    """Per-step views, made in one call each: indexing the stacked tensors at every step would make
    autograd scatter a full-size zero gradient per step (quadratic in T)."""
    value_steps = values.unbind(0)
    key_steps = keys.unbind(0) if keys is not None else [None] * len(value_steps)
    return [StepInputs(k, v) for k, v in zip(key_steps, value_steps, strict=True)]


def autograd_loop(
    spec: StepSpec,
    weights: StepWeights,
    keys: Tensor | None,
    values: Tensor,
    h: Tensor,
    c: Tensor,
    keep: Tensor | None,
    dropout: tuple[float, float] = (0.0, 0.0),
    details: bool = False,
) -> tuple[Tensor, Tensor, Tensor, list[dict]]:
    """``T`` steps under autograd. ``keys``/``values``: :class:`StepInputs`' tensors stacked over steps
    ``(T, ...)``; ``keep`` ``(T, B, 1)`` or None; ``dropout`` the live (input, communication) dropout
    probabilities. Returns outputs ``(T, K, B, U)``, the last ``h, c`` and, with ``details``, each step's
    ``active`` and ``input_attention``."""
    input_p, comm_p = dropout
    outputs, infos = [], []
    for t, inputs in enumerate(_step_inputs(keys, values)):
        if keep is not None:
            h, c = h * keep[t], c * keep[t]
        masks = NO_DROPOUT
        if input_p > 0 or comm_p > 0:
            masks = _draw_masks(spec, inputs, h, input_p, comm_p)
        h, c, info = rims_step(spec, weights, inputs, h, c, masks, details=details)
        outputs.append(h)
        if details:
            infos.append(info)
    return torch.stack(outputs), h, c, infos


def _draw_masks(spec: StepSpec, inputs: StepInputs, h: Tensor, input_p: float, comm_p: float) -> StepMasks:
    """One step's dropout masks, input attention first, as ``F.dropout`` inside the step would draw them."""
    units, batch = spec.units, h.shape[1]
    input_mask = comm_mask = None
    if input_p > 0 and spec.input_attention:
        shape = (units, batch, spec.input_heads) + (() if inputs.keys.dim() == 3 else (inputs.keys.shape[1],))
        input_mask = dropout_mask(h.new_empty(shape), input_p)
    if comm_p > 0 and spec.communication:
        comm_mask = dropout_mask(h.new_empty(units, units, batch, spec.comm_heads, 1), comm_p)
    return StepMasks(input_mask, comm_mask)


# ------------------------------------------------------------------------------------- fused loop


def _compiled(tensor: Tensor):
    """The compiled loop for this tensor's device and dtype, or None."""
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        return None
    return native.loop()


def _or_empty(tensor: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if tensor is None else tensor.contiguous()


def _keep_steps(keep: Tensor | None, like: Tensor) -> Tensor:
    """The keep mask ``(T, B, 1)`` as ``(T, B)`` for the compiled loop (empty without episode starts)."""
    # contiguous: sb3-contrib's episode starts arrive transposed, and 1 - starts keeps their strides
    return like.new_empty(0) if keep is None else keep.reshape(keep.shape[0], -1).contiguous()


# The compiled forward's saved tensors, in its order: the step's saved tensors it keeps, and the local
# derivatives of rims_rl.step.step_factors, which it forms as it goes (p_slope empty for an input set,
# whose backward reads the attention p itself).
_FACTORS = ("mask", "unmask", "f", "cell_to_c", "pre", "p_slope", "out")
_COMPILED_SAVED = ("h", "q", "p", "readout", "h_mix", *_FACTORS[:-1], "qkv", "comm_attention", "read", "out")


def _is_set(keys: Tensor) -> bool:
    """Whether stacked keys are an input set's ``(T, B, N + 1, H, dk)`` rather than one row's ``(T, B, H, dk)``."""
    return keys.dim() == 5


def run_fused(spec: StepSpec, weights: StepWeights, keys: Tensor, values: Tensor, h, c, keep, save: bool):
    """The forward loop of :class:`FusedLoop`: outputs ``(T, K, B, U)``, the last ``h, c`` and, with
    ``save``, what the backward needs stacked as ``(T, ...)``. One row: ``keys`` ``(T, B, H, dk)`` scaled,
    ``values`` ``(T, B, R)``; a set: ``keys`` ``(T, B, N + 1, H, dk)`` scaled, ``values`` ``(T, B, N + 1, H,
    dv)``, the null row first."""
    compiled = _compiled(keys)
    if compiled is not None:
        outputs, h, c, *per_step = compiled.forward_loop(
            keys.contiguous(),
            values.reshape(-1, weights.weight_ih.shape[1]).contiguous(),
            weights.weight_ih,
            h.contiguous(),
            c.contiguous(),
            weights.hidden_weight,
            weights.hidden_bias.contiguous(),
            *(_or_empty(w, keys) for w in (weights.comm_qkv, weights.comm_output, weights.comm_output_bias)),
            _keep_steps(keep, keys),
            spec.k_active,
            spec.comm_heads,
            spec.comm_key_size,
            spec.comm_value_size,
            spec.communication,
            save,
        )
        return outputs, h, c, dict(zip(_COMPILED_SAVED, per_step, strict=False)) if save else None
    outputs, steps_saved = [], []
    for t, inputs in enumerate(_step_inputs(keys, values)):
        if keep is not None:
            h, c = h * keep[t], c * keep[t]
        entering = h
        h, c, saved = rims_step(spec, weights, inputs, h, c, save=save)
        if save:
            saved["h"] = entering
            steps_saved.append(saved)
        outputs.append(h)
    stacked = None
    if save:
        names = [name for name, value in steps_saved[0].items() if value is not None and name != "active"]
        stacked = {name: torch.stack([saved[name] for saved in steps_saved]) for name in names}
    return torch.stack(outputs), h, c, stacked


def fused_loop(spec: StepSpec, weights: StepWeights, keys: Tensor, values: Tensor, h: Tensor, c: Tensor, keep):
    """Outputs ``(T, K, B, U)`` and the last ``h, c`` through :class:`FusedLoop` (or its forward alone
    when nothing needs a gradient)."""
    tensors = (keys, values, h, c, *weights)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return FusedLoop.apply(spec, keep, keys, values, h, c, *weights)
    outputs, h, c, _ = run_fused(spec, weights, keys, values, h, c, keep, save=False)
    return outputs, h, c


class FusedLoop(torch.autograd.Function):
    """The whole time loop as one node; see the module docstring."""

    @staticmethod
    def forward(ctx, spec: StepSpec, keep, keys, values, h, c, *weight_tensors):
        weights = StepWeights(*weight_tensors)
        with torch.no_grad():
            outputs, h, c, saved = run_fused(spec, weights, keys, values, h, c, keep, save=True)
        ctx.spec, ctx.keep, ctx.saved = spec, keep, saved
        ctx.save_for_backward(keys, values, *weight_tensors)
        return outputs, h, c

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_h: Tensor, grad_c: Tensor):
        spec, keep, saved = ctx.spec, ctx.keep, ctx.saved
        keys, values, *weight_tensors = ctx.saved_tensors
        weights = StepWeights(*weight_tensors)
        steps, batch = keys.shape[:2]
        units, size, gates = spec.units, spec.unit_size, spec.gates
        is_set = _is_set(keys)
        if "act" in saved:  # the Python forward kept the gate values; the compiled one their derivatives
            factors = step_factors(spec, saved)
        else:
            factors = {name: saved[name] for name in _FACTORS if name in saved}
            if is_set:
                factors["attention"] = saved["p"]
        # What the input side's backward multiplies by: one row's sigmoid slopes, or a set's attention.
        input_factor = factors["attention"] if is_set else factors["p_slope"]
        dh = grad_h if grad_h is not None else grad_outputs.new_zeros(units, batch, size)
        dc = grad_c if grad_c is not None else grad_outputs.new_zeros(units, batch, size)
        # Transposed views: the compiled loop repacks them anyway, the Python one copies them.
        transposed = StepWeights(*(None if w is None or w.dim() < 3 else w.transpose(1, 2) for w in weights))
        compiled = _compiled(keys)
        if compiled is not None:
            dh, dc, *grads = compiled.backward_loop(
                dh.contiguous(),
                dc.contiguous(),
                grad_outputs.contiguous(),
                keys.contiguous(),
                values.reshape(-1, weights.weight_ih.shape[1]).contiguous(),
                transposed.weight_ih,
                *(factors[name].contiguous() for name in _FACTORS[:-2]),
                input_factor.contiguous(),
                *(_or_empty(x, keys) for x in (factors.get("out"), saved.get("qkv"), saved.get("comm_attention"))),
                *(keys.new_empty(0) if w is None else w for w in (transposed.hidden_weight, transposed.comm_qkv)),
                keys.new_empty(0) if transposed.comm_output is None else transposed.comm_output,
                _keep_steps(keep, keys),
                spec.comm_heads,
                spec.comm_key_size,
                spec.comm_value_size,
                spec.communication,
            )
            grad = dict(zip(("projected", "scores", "readout", "qkv", "out"), grads, strict=False))
        else:
            contiguous = StepWeights(*(None if w is None else w.contiguous() for w in transposed))
            per_step = {name: saved[name] for name in ("qkv", "comm_attention") if name in saved} | factors
            per_step = {name: value.unbind(0) for name, value in per_step.items()}
            step_grads = []
            grad_steps = grad_outputs.unbind(0)
            for t, inputs in reversed(list(enumerate(_step_inputs(keys, values)))):
                step = {name: value[t] for name, value in per_step.items()}
                dh, dc, grads = step_backward(spec, dh + grad_steps[t], dc, step, inputs, contiguous)
                step_grads.append(grads)
                if keep is not None:
                    dh, dc = dh * keep[t], dc * keep[t]
            grad = {name: torch.stack([g[name] for g in reversed(step_grads)]) for name in step_grads[0]}

        # Everything the recurrence did not need, for all steps at once.
        def over_steps(x: Tensor) -> Tensor:  # (T, K, B, n) -> (K, T * B, n)
            return x.transpose(0, 1).reshape(units, steps * batch, -1)

        # Bias gradients from the unit-major copies the weight gradients need anyway: a sum over the
        # middle dimension there is several times faster than over (T, B) of the step-major tensors.
        d_projected = over_steps(grad["projected"])
        d_hidden_weight = torch.bmm(over_steps(saved["h"]).transpose(1, 2), d_projected)
        d_hidden_bias = d_projected.sum(1, keepdim=True)
        d_weight_ih = torch.bmm(over_steps(saved["readout"]).transpose(1, 2), d_projected[..., :gates])
        # Each unit read the values weighted by its p: their gradient sums the units' read-out gradients so.
        d_readout = grad["readout"].view(steps, units, batch, spec.input_heads, -1)
        if is_set:  # scores (T, K, B, H, N + 1), queries (T, K, B, H, dk): sums over the units
            d_keys = torch.einsum("tkbhn,tkbhd->tbnhd", grad["scores"], saved["q"])
            d_values = torch.einsum("tkbhn,tkbhv->tbnhv", saved["p"], d_readout)
        else:
            d_keys = (grad["scores"].unsqueeze(-1) * saved["q"]).sum(1)
            d_values = (d_readout * saved["p"].unsqueeze(-1)).sum(1).view(steps, batch, -1)
        d_qkv = d_out = d_out_bias = None
        if spec.communication:
            d_qkv = torch.bmm(over_steps(saved["h_mix"]).transpose(1, 2), over_steps(grad["qkv"]))
            d_out_all = over_steps(grad["out"])
            d_out = torch.bmm(over_steps(saved["read"]).transpose(1, 2), d_out_all)
            d_out_bias = d_out_all.sum(1, keepdim=True)
        # (spec, keep), keys, values, h, c, then StepWeights' fields in order.
        return (
            None,
            None,
            d_keys,
            d_values,
            dh,
            dc,
            d_hidden_weight,
            d_hidden_bias,
            d_weight_ih,
            None,  # bias_ih: GRU only, which this loop does not take
            d_qkv,
            d_out,
            d_out_bias,
        )
