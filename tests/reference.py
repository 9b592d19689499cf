"""A literal, slow RIMs step written from the paper's text (Section 2), one batch entry and one unit
at a time, with torch's own LSTMCell / GRUCell for the unit dynamics. Tests compare the batched
module against it; it shares nothing with the module but the parameter tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rims_rl import RIMs


def _unit_cell(module: RIMs, k: int) -> nn.Module:
    """torch's own cell holding unit k's weights (torch stores them transposed, same gate order)."""
    size = module.unit_size
    cls = nn.LSTMCell if module.cell == "lstm" else nn.GRUCell
    cell = cls(module.weight_ih.shape[1], size).to(module.weight_ih.dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(module.weight_ih[k].T)
        cell.weight_hh.copy_(module.weight_hh[k].T)
        cell.bias_ih.copy_(module.bias_ih[k])
        cell.bias_hh.copy_(module.bias_hh[k])
    return cell


@torch.no_grad()
def reference_step(module: RIMs, rows: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One step for one batch entry. rows (N, input_size); h, c (K, unit_size).

    Returns new (h, c), the active units as a sorted list, and the input attention (K, heads, N+1).
    """
    units, heads = module.num_units, module.input_heads
    k_active = module.k_active
    # Step 1: the null row, then bias-free keys and values shared by all units.
    if module.input_attention:
        table = torch.cat([torch.zeros(1, rows.shape[1], dtype=rows.dtype), rows])
        keys = (table @ module.input_key).view(len(table), heads, module.input_key_size)
        values = (table @ module.input_value).view(len(table), heads, module.input_value_size)
        attention = torch.zeros(units, heads, len(table), dtype=rows.dtype)
        reads = []
        for k in range(units):
            query = (h[k] @ module.input_query[k]).view(heads, module.input_key_size)
            per_head = []
            for head in range(heads):
                scores = keys[:, head] @ query[head] / math.sqrt(module.input_key_size)
                attention[k, head] = torch.softmax(scores, dim=0)
                per_head.append(attention[k, head] @ values[:, head])
            reads.append(torch.cat(per_head))
        # Step 2: least null attention, averaged over heads; ties to the lower index.
        null = attention[:, :, 0].mean(1).tolist()
        active = sorted(sorted(range(units), key=lambda k: (null[k], k))[:k_active])
    else:
        reads = [rows.mean(0)] * units
        attention = torch.zeros(units, heads, 0, dtype=rows.dtype)
        active = list(range(units))
    # Step 3: active units update with their own cell; the others keep h and c.
    h_new, c_new = h.clone(), c.clone()
    for k in active:
        cell = _unit_cell(module, k)
        if module.cell == "lstm":
            hk, ck = cell(reads[k][None], (h[k][None], c[k][None]))
            h_new[k], c_new[k] = hk[0], ck[0]
        else:
            h_new[k] = cell(reads[k][None], h[k][None])[0]
    # Step 4: active units read from all units; residual.
    if module.communication:
        ch, dk, dv = module.comm_heads, module.comm_key_size, module.comm_value_size
        projected = torch.stack([h_new[j] @ module.comm_qkv[j] for j in range(units)])
        queries = projected[:, : ch * dk].view(units, ch, dk)
        keys = projected[:, ch * dk : 2 * ch * dk].view(units, ch, dk)
        values = projected[:, 2 * ch * dk :].view(units, ch, dv)
        h_comm = h_new.clone()
        for k in active:
            read = []
            for head in range(ch):
                weights = torch.softmax(keys[:, head] @ queries[k, head] / math.sqrt(dk), dim=0)
                read.append(weights @ values[:, head])
            update, gate = (torch.cat(read) @ module.comm_output[k] + module.comm_output_bias[k]).chunk(2)
            h_comm[k] = h_new[k] + torch.sigmoid(gate) * torch.tanh(update)
        h_new = h_comm
    return h_new, c_new, active, attention


def reference_run(module: RIMs, x: torch.Tensor):
    """T steps over a batch, from zero state. x (T, B, D) or (T, B, N, D).

    Returns output (T, B, K*unit), active (T, B, K) bool, input attention (T, B, K, heads, N+1).
    """
    rows = x if x.dim() == 4 else x.unsqueeze(2)
    steps, batch = rows.shape[:2]
    units, size = module.num_units, module.unit_size
    h = torch.zeros(batch, units, size, dtype=x.dtype)
    c = torch.zeros(batch, units, size, dtype=x.dtype)
    outputs = torch.zeros(steps, batch, units * size, dtype=x.dtype)
    actives = torch.zeros(steps, batch, units, dtype=torch.bool)
    attentions = []
    for t in range(steps):
        per_batch = []
        for b in range(batch):
            h[b], c[b], active, attention = reference_step(module, rows[t, b], h[b], c[b])
            actives[t, b, active] = True
            outputs[t, b] = h[b].reshape(-1)
            per_batch.append(attention)
        attentions.append(torch.stack(per_batch))
    return outputs, actives, torch.stack(attentions)
