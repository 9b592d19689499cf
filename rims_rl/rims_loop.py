"""The RIMs time loop as one autograd node, for the path reinforcement learning takes.

At the batch sizes of recurrent PPO minibatches (a few sequences of 128 steps) the loop is a long
chain of small ops. Eager autograd records each of them and replays a node per op backward, with the
gradients its generic formulas need. Here the forward runs without recording and keeps what the
backward needs; the backward is written out by hand with fewer ops per step: every local derivative
(gate and attention slopes, the active mask) is formed for all steps at once before the loop, and
every product the recurrence does not need (weight gradients, the gradients of the precomputed keys and
value projections) after it, over all steps in one bmm. Each step, each unit reads the heads' values
weighted by its input attention and projects that read-out through its ``weight_ih`` (and, backward, the
read-out's gradient back): at a few rows per step this is cheaper than precomputing every head's share
of the gates for all steps, which is heads x units x gates numbers per row.

It covers one input row, input attention, the LSTM cell, with or without communication and with
dropout off (RL configs set it to 0; :meth:`RIMs._run` falls back to eager autograd otherwise). The
values equal the eager path's; the tests compare both, gradients included, in float64.

On CPU the two loops run compiled (:mod:`rims_rl.native`, same arithmetic, same step-major layouts:
every per-step tensor is stacked as ``(T, ...)``) when the extension builds, here in Python otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rims_rl import native


class LoopSpec:
    """Sizes of one call: units, unit size, input heads and key size, comm heads, key and value size."""

    def __init__(self, rims, batch: int) -> None:
        self.units, self.size, self.batch = rims.num_units, rims.unit_size, batch
        self.k_active = rims.k_active
        self.heads, self.key = rims.input_heads, rims.input_key_size
        self.communication = rims.communication
        self.comm_heads, self.comm_key, self.comm_value = rims.comm_heads, rims.comm_key_size, rims.comm_value_size


def select_active(p_null: Tensor, k_active: int) -> Tensor:
    """Bool mask (K, B) of the ``k_active`` units with the least null attention ``p_null`` (K, B).
    A stable sort makes ties go to the lower unit index, on every device."""
    order = torch.sort(p_null, dim=0, stable=True).indices[:k_active]
    return torch.zeros_like(p_null, dtype=torch.bool).scatter_(0, order, True)


def forward_step(
    spec: LoopSpec, h, c, keys, values, weight_ih, hidden_weight, hidden_bias, qkv_weight, out_weight, out_bias
):
    """One step from ``(h, c)`` (after any reset), with this step's keys ``(B, H, dk)`` and values
    ``(B, H * dv)``. Returns ``h, c`` and the tensors the backward needs."""
    units, batch, size = spec.units, h.shape[1], spec.size
    gates = 4 * size
    projected = torch.baddbmm(hidden_bias, h, hidden_weight)
    queries = projected[..., gates:].view(units, batch, spec.heads, spec.key)
    p_input = torch.sigmoid((queries * keys).sum(-1))
    readout = (p_input.unsqueeze(-1) * values.view(1, batch, spec.heads, -1)).view(units, batch, -1)
    pre = torch.baddbmm(projected[..., :gates], readout, weight_ih)
    # One sigmoid over all four gates; the candidate's slot in it goes unused.
    act = torch.sigmoid(pre)
    i, f, _, o = act.chunk(4, dim=-1)
    g = torch.tanh(pre[..., 2 * size : 3 * size])
    c_new = torch.addcmul(f * c, i, g)
    tanh_c = torch.tanh(c_new)
    h_cell = o * tanh_c
    if spec.k_active < units:
        mask = select_active(1.0 - p_input.mean(-1), spec.k_active).unsqueeze(-1)
        h_mix, c_next = torch.where(mask, h_cell, h), torch.where(mask, c_new, c)
    else:
        mask, h_mix, c_next = None, h_cell, c_new
    saved = {"c": c, "q": queries, "p": p_input, "readout": readout, "mask": mask, "act": act, "g": g}
    saved |= {"tanh_c": tanh_c, "h_mix": h_mix}
    if not spec.communication:
        return h_mix, c_next, saved
    heads, key, value = spec.comm_heads, spec.comm_key, spec.comm_value
    qkv = torch.bmm(h_mix, qkv_weight)
    q, k, v = qkv.split([heads * key, heads * key, heads * value], dim=-1)
    scores = (q.view(units, 1, batch, heads, key) * k.view(1, units, batch, heads, key)).sum(-1, keepdim=True)
    attention = torch.softmax(scores, dim=1)
    read = (attention * v.view(1, units, batch, heads, value)).sum(1).view(units, batch, -1)
    update, gate = torch.baddbmm(out_bias, read, out_weight).chunk(2, dim=-1)
    sig, tanh_u = torch.sigmoid(gate), torch.tanh(update)
    residual = sig * tanh_u
    h_next = h_mix + (residual if mask is None else residual * mask)
    saved |= {"qkv": qkv, "attention": attention, "read": read, "sig": sig, "tanh_u": tanh_u}
    return h_next, c_next, saved


def backward_step(
    spec: LoopSpec, dh, dc, step, keys, values, weight_ih_t, hidden_weight_t, qkv_weight_t, out_weight_t, output_gate
):
    """Gradients through one step: ``dh, dc`` after it -> before it (before any reset), and the
    step's gradients of the hidden projection's output, the input scores, the input read-out and the
    comm projections.
    ``step`` holds this step's slices of the forward's saved tensors and of :func:`_factors`;
    ``output_gate`` (1, 1, 4, 1) is True in the output gate's slot."""
    units, batch, size = spec.units, dh.shape[1], spec.size
    grads = {}
    if spec.communication:
        heads, key, value = spec.comm_heads, spec.comm_key, spec.comm_value
        split = heads * key
        d_out = (dh.unsqueeze(-2) * step["out"]).view(units, batch, 2 * size)
        d_read = torch.bmm(d_out, out_weight_t).view(units, 1, batch, heads, value)
        q, k, v = step["qkv"].split([split, split, heads * value], dim=-1)
        attention = step["attention"]
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
        d_mix = torch.baddbmm(dh, d_qkv, qkv_weight_t)
        grads["out"], grads["qkv"] = d_out, d_qkv
    else:
        d_mix = dh
    d_c_new = torch.addcmul(dc * step["mask"], d_mix, step["cell_to_c"])
    # (d c_new, d c_new, d c_new, d h_cell) against the gates (i, f, g, o), in one op.
    sources = torch.where(output_gate, d_mix.unsqueeze(-2), d_c_new.unsqueeze(-2))
    d_pre = (sources * step["pre"]).view(units, batch, 4 * size)
    dc = torch.addcmul(dc * step["unmask"], d_c_new, step["f"])
    d_readout = torch.bmm(d_pre, weight_ih_t)
    per_head = d_readout.view(units, batch, spec.heads, -1) * values.view(1, batch, spec.heads, -1)
    d_scores_in = per_head.sum(-1) * step["p_slope"]
    d_projected = torch.cat([d_pre, (d_scores_in.unsqueeze(-1) * keys).reshape(units, batch, -1)], dim=-1)
    dh = torch.baddbmm(d_mix * step["unmask"], d_projected, hidden_weight_t)
    grads["projected"], grads["scores"], grads["readout"] = d_projected, d_scores_in, d_readout
    return dh, dc, grads


def _compiled(tensor: Tensor):
    """The compiled loop for this tensor's device and dtype, or None."""
    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        return None
    return native.loop()


def _keep_all(keep: Tensor | None, reset_steps: set[int], like: Tensor) -> Tensor:
    """The keep masks ``(T, B, 1)`` as ``(T, B)`` (empty without resets), for the compiled loop."""
    # contiguous: sb3-contrib's episode starts arrive transposed, and 1 - starts keeps their strides
    return keep.reshape(keep.shape[0], -1).contiguous() if reset_steps else like.new_empty(0)


def _or_empty(tensor: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if tensor is None else tensor.contiguous()


def _per_step(values: Tensor, steps: int, batch: int) -> tuple[Tensor, ...]:
    """The padded values ``(rows, H * dv)`` as one ``(B, H * dv)`` view per step."""
    return values[: steps * batch].view(steps, batch, -1).unbind(0)


# The local derivatives of _factors, and the compiled forward's saved tensors: it forms those
# derivatives itself, where the Python loop keeps the gate values for _factors.
_FACTORS = ("mask", "unmask", "f", "cell_to_c", "pre", "p_slope", "out")
_COMPILED_SAVED = ("h", "q", "p", "readout", "h_mix", *_FACTORS[:-1], "qkv", "attention", "read", "out")


def run_loop(spec: LoopSpec, tensors: tuple[Tensor, ...], reset_steps: set[int], keep, save: bool):
    """The forward loop. ``tensors``: keys (T, B, H, dk) scaled, values (rows >= T * B, H * dv),
    weight_ih (K, H * dv, G), h0, c0 (K, B, U), hidden weight (K, U, G + H * dk) and bias
    (K, 1, G + H * dk), comm qkv weight (K, U, QKV) scaled, comm output weight (K, Hv, 2U) and bias
    (K, 1, 2U) (the comm ones None without communication). Returns outputs (T, K, B, U), h_T, c_T
    and, with ``save``, what the backward needs, stacked as ``(T, ...)``."""
    keys, values, weight_ih, h, c, *weights = tensors
    compiled = _compiled(keys)
    if compiled is not None:
        # keys, values, h and c come contiguous from RIMs._run_fused; the C++ side checks.
        results = compiled.forward_loop(
            keys,
            values,
            weight_ih,
            h,
            c,
            *(_or_empty(w, keys) for w in weights),
            _keep_all(keep, reset_steps, keys),
            sorted(reset_steps),
            spec.k_active,
            spec.comm_heads,
            spec.comm_key,
            spec.comm_value,
            spec.communication,
            save,
        )
        outputs, h, c, *per_step = results
        stacked = None
        if save:
            stacked = dict(zip(_COMPILED_SAVED[: len(per_step)], per_step, strict=True))
        return outputs, h, c, stacked
    outputs, steps_saved = [], []
    # Per-step views made in one call each rather than one indexing op per step.
    for t, (keys_t, step_values) in enumerate(
        zip(keys.unbind(0), _per_step(values, keys.shape[0], spec.batch), strict=True)
    ):
        if t in reset_steps:
            h, c = h * keep[t], c * keep[t]
        entering = h
        h, c, saved = forward_step(spec, h, c, keys_t, step_values, weight_ih, *weights)
        if save:
            saved["h"] = entering
            steps_saved.append(saved)
        outputs.append(h)
    stacked = None
    if save:
        stacked = {
            name: torch.stack([saved[name] for saved in steps_saved])
            for name in steps_saved[0]
            if steps_saved[0][name] is not None
        }
    return torch.stack(outputs), h, c, stacked


def _factors(spec: LoopSpec, saved: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every local derivative the backward multiplies by, for all steps at once ((T, K, ...)), with
    the active mask folded in so that the loop does as few small ops as possible."""
    i, f, _, o = saved["act"].chunk(4, dim=-1)
    g, c, tanh_c = saved["g"], saved["c"], saved["tanh_c"]
    mask = saved["mask"].to(c.dtype) if "mask" in saved else torch.ones_like(c[..., :1])
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
        "p_slope": saved["p"] * (1.0 - saved["p"]),
    }
    if spec.communication:
        sig, tanh_u = saved["sig"], saved["tanh_u"]
        # d (update, gate) of d h_next through mask * sigmoid(gate) * tanh(update).
        out = torch.stack([sig * (1.0 - tanh_u * tanh_u), tanh_u * sig * (1.0 - sig)], -2)
        factors["out"] = out * mask.unsqueeze(-1)
    return factors


def _backward_loop(spec: LoopSpec, dh, dc, grad_outputs, keys, values, saved, factors, weights_t, reset_steps, keep):
    """The backward recurrence in Python: ``dh, dc`` before the first step and the per-step gradients
    (projected, scores, readout and, with communication, qkv and out) stacked as ``(T, K, B, n)``.
    ``weights_t``: weight_ih, the hidden weight and the comm weights, transposed and contiguous."""
    per_step = {name: saved[name] for name in ("qkv", "attention") if name in saved} | factors
    per_step = {name: value.unbind(0) for name, value in per_step.items()}
    steps = keys.shape[0]
    keys_t, grad_outputs_t = keys.unbind(0), grad_outputs.unbind(0)
    values_t = _per_step(values, steps, spec.batch)
    output_gate = torch.arange(4, device=keys.device).eq(3).view(1, 1, 4, 1)
    step_grads = []
    for t in reversed(range(steps)):
        step = {name: value[t] for name, value in per_step.items()}
        dh, dc, grads = backward_step(
            spec, dh + grad_outputs_t[t], dc, step, keys_t[t], values_t[t], *weights_t, output_gate
        )
        step_grads.append(grads)
        if t in reset_steps:
            dh, dc = dh * keep[t], dc * keep[t]
    grad = {name: torch.stack([grads[name] for grads in reversed(step_grads)]) for name in step_grads[0]}
    return dh, dc, grad


class FusedLoop(torch.autograd.Function):
    """The whole time loop as one node; see the module docstring."""

    @staticmethod
    def forward(ctx, spec: LoopSpec, reset_steps: set[int], keep, *tensors: Tensor):
        with torch.no_grad():
            outputs, h, c, saved = run_loop(spec, tensors, reset_steps, keep, save=True)
        ctx.spec, ctx.reset_steps, ctx.keep, ctx.saved = spec, reset_steps, keep, saved
        keys, values, weight_ih, _, _, hidden_weight, _, qkv_weight, out_weight, _ = tensors
        ctx.save_for_backward(keys, values, weight_ih, hidden_weight, qkv_weight, out_weight)
        return outputs, h, c

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_h: Tensor, grad_c: Tensor):
        spec, keep, saved = ctx.spec, ctx.keep, ctx.saved
        keys, values, weight_ih, hidden_weight, qkv_weight, out_weight = ctx.saved_tensors
        units, batch, size = spec.units, spec.batch, spec.size
        steps, gates = keys.shape[0], 4 * size
        factors = _factors(spec, saved) if "act" in saved else {name: saved[name] for name in _FACTORS if name in saved}
        dh = grad_h if grad_h is not None else grad_outputs.new_zeros(units, batch, size)
        dc = grad_c if grad_c is not None else grad_outputs.new_zeros(units, batch, size)
        # Transposed views: the compiled loop repacks them anyway, the Python one copies them.
        weight_ih_t, *weights_t = [
            None if w is None else w.transpose(1, 2) for w in (weight_ih, hidden_weight, qkv_weight, out_weight)
        ]
        compiled = _compiled(keys)
        if compiled is not None:
            dh, dc, *grads = compiled.backward_loop(
                dh.contiguous(),
                dc.contiguous(),
                grad_outputs.contiguous(),
                keys,
                values,
                weight_ih_t,
                *(factors[name].contiguous() for name in _FACTORS[:-1]),
                *(_or_empty(x, keys) for x in (factors.get("out"), saved.get("qkv"), saved.get("attention"))),
                *(keys.new_empty(0) if w is None else w for w in weights_t),
                _keep_all(keep, ctx.reset_steps, keys),
                sorted(ctx.reset_steps),
                spec.comm_heads,
                spec.comm_key,
                spec.comm_value,
                spec.communication,
            )
            grad = dict(zip(("projected", "scores", "readout", "qkv", "out")[: len(grads)], grads, strict=True))
        else:
            dh, dc, grad = _backward_loop(
                spec,
                dh,
                dc,
                grad_outputs,
                keys,
                values,
                saved,
                factors,
                [None if w is None else w.contiguous() for w in (weight_ih_t, *weights_t)],
                ctx.reset_steps,
                keep,
            )
        grad_projected, grad_scores = grad["projected"], grad["scores"]

        # Everything the recurrence did not need, for all steps at once.
        def over_steps(x: Tensor) -> Tensor:  # (T, K, B, n) -> (K, T * B, n)
            return x.transpose(0, 1).reshape(units, steps * batch, -1)

        # Bias gradients from the unit-major copies the weight gradients need anyway: a sum over the
        # middle dimension there is several times faster than over (T, B) of the step-major tensors.
        d_projected_all = over_steps(grad_projected)
        d_hidden_weight = torch.bmm(over_steps(saved["h"]).transpose(1, 2), d_projected_all)
        d_hidden_bias = d_projected_all.sum(1, keepdim=True)
        d_keys = (grad_scores.unsqueeze(-1) * saved["q"]).sum(1)
        d_pre_all = d_projected_all[..., :gates]
        d_weight_ih = torch.bmm(over_steps(saved["readout"]).transpose(1, 2), d_pre_all)
        # Each unit read the values weighted by its p: their gradient sums the units' read-out gradients so.
        rows = steps * batch
        d_readout = grad["readout"].view(steps, units, batch, spec.heads, -1)
        d_values = torch.zeros_like(values)
        d_values[:rows] = (d_readout * saved["p"].unsqueeze(-1)).sum(1).view(rows, -1)
        d_qkv_weight = d_out_weight = d_out_bias = None
        if spec.communication:
            d_qkv_weight = torch.bmm(over_steps(saved["h_mix"]).transpose(1, 2), over_steps(grad["qkv"]))
            d_out_all = over_steps(grad["out"])
            d_out_weight = torch.bmm(over_steps(saved["read"]).transpose(1, 2), d_out_all)
            d_out_bias = d_out_all.sum(1, keepdim=True)
        return (
            None,
            None,
            None,
            d_keys,
            d_values,
            d_weight_ih,
            dh,
            dc,
            d_hidden_weight,
            d_hidden_bias,
            d_qkv_weight,
            d_out_weight,
            d_out_bias,
        )
