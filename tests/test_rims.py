"""The RIMs core: each property of the paper's step, proven on small modules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.func import functional_call

from rims_rl import RIMs, native
from rims_rl import loop as rims_loop
from rims_rl.step import StepInputs, dropout_mask, rims_step, step_backward, step_factors
from tests.reference import reference_run

CELLS = ["lstm", "gru"]
# Values wider than the input row (6): each unit reads the row through its folded input weights.
FOLDED = {"input_value_size": 8}


def small(cell: str = "lstm", **kwargs) -> RIMs:
    """A small module with the paper's structure; dropout off unless asked for."""
    settings = dict(
        input_size=6,
        unit_size=5,
        num_units=5,
        k_active=3,
        cell=cell,
        input_heads=2,
        input_key_size=4,
        input_value_size=3,
        comm_heads=2,
        comm_key_size=3,
        comm_value_size=4,
        input_dropout=0.0,
        comm_dropout=0.0,
    )
    settings.update(kwargs)
    return RIMs(**settings)


def run_steps(module: RIMs, x: torch.Tensor, episode_starts=None):
    """T single-step calls, carrying the state: the acting path."""
    state, outputs, states = None, [], []
    for t in range(x.shape[0]):
        starts = None if episode_starts is None else episode_starts[t : t + 1]
        out, state = module(x[t : t + 1], state, starts)
        outputs.append(out)
        states.append(state)
    return torch.cat(outputs), states


def unit_slices(tensor: torch.Tensor, module: RIMs) -> torch.Tensor:
    """(1, B, K*unit) -> (B, K, unit)."""
    return tensor[0].view(tensor.shape[1], module.num_units, module.unit_size)


# ---------------------------------------------------------------------------- the step itself


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("rows", [None, 3], ids=["one-row", "input-set"])
@pytest.mark.parametrize("batch", [3, 20], ids=["small-batch", "large-batch"])
@pytest.mark.parametrize("variant", [{}, {"communication": False}, {"input_attention": False}, {"k_active": 5}, FOLDED])
def test_matches_literal_reference(cell, rows, batch, variant):
    """The batched module computes the paper's step (null row, head-averaged null attention,
    top-k, unit cells, communication) as a literal per-unit implementation does."""
    torch.manual_seed(0)
    module = small(cell, **variant).double()
    shape = (7, batch, module.input_size) if rows is None else (7, batch, rows, module.input_size)
    x = torch.randn(*shape, dtype=torch.float64)
    output, _, details = module.forward_with_details(x)
    expected, active, attention = reference_run(module, x)
    assert torch.equal(details.active, active)
    torch.testing.assert_close(output, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(details.input_attention, attention, rtol=1e-9, atol=1e-10)


# The three ways a call can run: autograd through the per-step ops (what forward_with_details takes),
# the fused loop in Python (RIMS_RL_NATIVE=0) and the compiled one. The fused loops cover one input
# row or an input set, input attention, LSTM cells and no live dropout.
PATHS = ["autograd", "python-loop", "compiled-loop"]


def call(module: RIMs, x: torch.Tensor, state=None, *, path: str, monkeypatch):
    """``output, (h, c)`` of ``module(x, state)`` through ``path``, checking that the path was taken."""
    if path == "autograd":
        output, state, _ = module.forward_with_details(x, state)
        assert "FusedLoopBackward" not in _graph_names(output)
        return output, state
    monkeypatch.setenv("RIMS_RL_NATIVE", "1" if path == "compiled-loop" else "0")
    compiled = native.loop()
    assert (compiled is not None) == (path == "compiled-loop")
    with torch.enable_grad():
        output, state = module(x, state)
    assert "FusedLoopBackward" in _graph_names(output)
    return output, state


@pytest.mark.parametrize("path", PATHS[1:])
@pytest.mark.parametrize("rows", [None, 3], ids=["one-row", "input-set"])
@pytest.mark.parametrize("batch", [3, 20], ids=["small-batch", "large-batch"])
@pytest.mark.parametrize("variant", [{}, {"communication": False}, {"k_active": 5}, FOLDED])
def test_fused_paths_match_literal_reference(path, rows, batch, variant, monkeypatch):
    """The fused loops compute the paper's step as the literal reference does: null row in the
    softmax, selection (with the full tie of a zero state at the first step), cells, communication."""
    torch.manual_seed(0)
    module = small(**variant).double()
    shape = (7, batch, module.input_size) if rows is None else (7, batch, rows, module.input_size)
    x = torch.randn(*shape, dtype=torch.float64)
    output, _ = call(module, x, path=path, monkeypatch=monkeypatch)
    expected, _, _ = reference_run(module, x)
    torch.testing.assert_close(output, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("rows", [None, 3], ids=["one-row", "input-set"])
def test_exactly_k_active_and_inactive_units_frozen_bit_for_bit(cell, rows):
    torch.manual_seed(1)
    module = small(cell, k_active=2)
    shape = (9, 4, module.input_size) if rows is None else (9, 4, rows, module.input_size)
    x = torch.randn(*shape)
    _, _, details = module.forward_with_details(x)
    assert (details.active.sum(-1) == 2).all()
    _, states = run_steps(module, x)
    previous = (torch.zeros_like(states[0][0]), torch.zeros_like(states[0][1]))
    inactive_seen = 0
    for t, state in enumerate(states):
        for index in range(2):
            before, after = unit_slices(previous[index], module), unit_slices(state[index], module)
            frozen = ~details.active[t]
            assert torch.equal(after[frozen], before[frozen])
            inactive_seen += int(frozen.sum())
        if cell == "lstm" or t == 0:
            # Active units do move (zero state at t=0 moves for both cells).
            moved = (
                unit_slices(state[0], module)[details.active[t]] != unit_slices(previous[0], module)[details.active[t]]
            )
            assert moved.any(dim=-1).all()
        previous = state
    assert inactive_seen > 0


def engineered(scores: list[list[float]], k_active: int) -> tuple[RIMs, torch.Tensor, tuple]:
    """A module whose unit k, head j scores the one input row at scores[k][j] (the null row scores 0).

    Key of the input row is 1 in every head; unit k's query is its state (1, 0) times weights
    holding scores[k]. key_size 1, so the 1/sqrt(d) scale is 1.
    """
    units, heads = len(scores), len(scores[0])
    module = RIMs(
        2,
        2,
        units,
        k_active,
        input_heads=heads,
        input_key_size=1,
        input_value_size=1,
        input_dropout=0.0,
        comm_dropout=0.0,
        communication=False,
    )
    with torch.no_grad():
        module.input_key.zero_()
        module.input_key[0] = 1.0
        module.input_query.zero_()
        module.input_query[:, 0, :] = torch.tensor(scores)
    x = torch.tensor([[[1.0, 0.0]]])
    h = torch.tensor([1.0, 0.0]).repeat(units).view(1, 1, -1)
    return module, x, (h, torch.zeros_like(h))


def updated_units(module: RIMs, before: torch.Tensor, after: torch.Tensor) -> list[list[int]]:
    """Per batch entry, the units whose h moved between two (1, B, K*unit) states."""
    moved = (unit_slices(after, module) != unit_slices(before, module)).any(-1)
    return [row.nonzero().flatten().tolist() for row in moved]


def test_selection_uses_null_probability_averaged_over_heads_not_raw_scores():
    # Unit 0: scores (6, -1): mean score 2.5, mean null probability (0.0025 + 0.731) / 2 = 0.367.
    # Unit 1: scores (1, 1): mean score 1.0, mean null probability 0.269 -> the least null wins.
    module, x, state = engineered([[6.0, -1.0], [1.0, 1.0]], k_active=1)
    _, _, details = module.forward_with_details(x, state)
    assert details.active[0, 0].tolist() == [False, True]
    null = details.input_attention[0, 0, :, :, 0]
    expected = torch.sigmoid(-torch.tensor([[6.0, -1.0], [1.0, 1.0]]))
    torch.testing.assert_close(null, expected)
    # Probabilities over the null row and the input row sum to one per unit and head.
    torch.testing.assert_close(details.input_attention.sum(-1), torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("scores", "k_active", "expected"),
    [
        ([[6.0, -1.0], [1.0, 1.0]], 1, [1]),  # head-averaged null probability, not the mean raw score
        ([[s, s] for s in [0.5, 3.0, -2.0, 2.0, 1.0, 0.0]], 3, [1, 3, 4]),  # higher score: less null
    ],
    ids=["averaged-over-heads", "order"],
)
def test_every_path_activates_the_units_with_least_null_attention(scores, k_active, expected, path, monkeypatch):
    """Selection seen from outside: exactly the chosen units' states move, the others keep theirs bit
    for bit; on the autograd path and in both fused loops."""
    module, x, state = engineered(scores, k_active=k_active)
    _, (h, _) = call(module, x, state, path=path, monkeypatch=monkeypatch)
    assert updated_units(module, state[0], h) == [expected]


@pytest.mark.parametrize("path", PATHS)
def test_ties_go_to_the_lowest_unit_indices(path, monkeypatch):
    # A zero state gives zero queries: every unit scores 0 against every row, a full tie.
    module = small(k_active=3)
    x = torch.randn(1, 4, module.input_size)
    _, _, details = module.forward_with_details(x)
    assert details.active[0].tolist() == [[True, True, True, False, False]] * 4
    zero = torch.zeros(1, 4, module.hidden_size)
    _, (h, _) = call(module, x, (zero, zero), path=path, monkeypatch=monkeypatch)
    assert updated_units(module, zero, h) == [[0, 1, 2]] * 4


def test_null_row_takes_part_in_the_softmax_of_an_input_set():
    """With zero input rows every key is zero, so attention is uniform over the N real rows AND
    the null row: 1 / (N + 1) each."""
    torch.manual_seed(2)
    module = small()
    x = torch.zeros(2, 3, 4, module.input_size)
    _, _, details = module.forward_with_details(x, (torch.randn(1, 3, 25), torch.randn(1, 3, 25)))
    torch.testing.assert_close(details.input_attention, torch.full_like(details.input_attention, 0.2))


# ---------------------------------------------------------------------------- state carry and resets


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("rows", [None, 3], ids=["one-row", "input-set"])
@pytest.mark.parametrize("batch", [1, 5, 20])
@pytest.mark.parametrize("variant", [{}, {"communication": False}, {"input_attention": False}, FOLDED])
def test_one_call_equals_single_steps_bit_for_bit(cell, rows, batch, variant):
    torch.manual_seed(3)
    module = small(cell, **variant).eval()
    shape = (11, batch, module.input_size) if rows is None else (11, batch, rows, module.input_size)
    x = torch.randn(*shape)
    starts = (torch.rand(11, batch) < 0.2).float()
    output, (h, c) = module(x, None, starts)
    stepped, states = run_steps(module, x, starts)
    assert torch.equal(output, stepped)
    assert torch.equal(h, states[-1][0]) and torch.equal(c, states[-1][1])


def test_episode_starts_reset_exactly_the_flagged_entries():
    torch.manual_seed(4)
    module = small()
    x = torch.randn(8, 4, module.input_size)
    state = (torch.randn(1, 4, 25), torch.randn(1, 4, 25))
    starts = torch.zeros(8, 4)
    starts[3, 1] = 1.0
    starts[0, 2] = 1.0
    output, _ = module(x, state, starts)
    plain, _ = module(x, state)
    # Untouched entries are exactly the run without resets.
    assert torch.equal(output[:, [0, 3]], plain[:, [0, 3]])
    # Entry 1 matches the plain run before its reset and a fresh zero-state run from step 3 on.
    assert torch.equal(output[:3, 1], plain[:3, 1])
    fresh, _ = module(x[3:, 1:2])
    torch.testing.assert_close(output[3:, 1], fresh[:, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(output[3:, 1], plain[3:, 1])
    # Entry 2 is reset at step 0: the given state is ignored.
    fresh, _ = module(x[:, 2:3])
    torch.testing.assert_close(output[:, 2], fresh[:, 0], rtol=0, atol=1e-6)


def test_given_state_is_used_and_returned_in_nn_lstm_layout():
    torch.manual_seed(5)
    module = small()
    x = torch.randn(3, 2, module.input_size)
    zero_out, (h, c) = module(x)
    assert h.shape == c.shape == (1, 2, module.hidden_size) == (1, 2, 25)
    assert torch.equal(zero_out[-1], h[0])
    other_out, _ = module(x, (torch.randn(1, 2, 25), torch.randn(1, 2, 25)))
    assert not torch.allclose(zero_out, other_out)


def test_gru_carries_c_unchanged():
    torch.manual_seed(6)
    module = small("gru")
    c = torch.randn(1, 2, 25)
    _, (_, c_out) = module(torch.randn(4, 2, module.input_size), (torch.zeros(1, 2, 25), c))
    assert torch.equal(c_out, c)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("rows", [None, 3], ids=["one-row", "input-set"])
@pytest.mark.parametrize("batch", [3, 20], ids=["small-batch", "large-batch"])
def test_gradients_reach_attention_cell_and_communication(rows, batch):
    torch.manual_seed(7)
    module = small()
    shape = (6, batch, module.input_size) if rows is None else (6, batch, rows, module.input_size)
    output, _ = module(torch.randn(*shape))
    output.pow(2).sum().backward()
    groups = {
        "input attention": ["input_key", "input_value", "input_query"],
        "cell": ["weight_ih", "weight_hh", "bias_ih", "bias_hh"],
        "communication": ["comm_qkv", "comm_output", "comm_output_bias"],
    }
    for group, names in groups.items():
        for name in names:
            grad = getattr(module, name).grad
            assert grad is not None and torch.isfinite(grad).all(), f"{group}: {name} has no gradient"
            assert grad.abs().sum() > 0, f"{group}: {name} has a zero gradient"


def test_inactive_unit_passes_gradient_through_its_carried_state():
    torch.manual_seed(8)
    module = small(k_active=2, communication=False)
    x = torch.randn(3, 1, module.input_size)
    _, _, details = module.forward_with_details(x)
    inactive = (~details.active[1, 0]).nonzero().flatten()
    unit = int(inactive[0])
    part = slice(unit * 5, (unit + 1) * 5)
    _, state0 = module(x[:1])
    h0 = state0[0].detach().requires_grad_(True)
    _out1, state1 = module(x[1:2], (h0, state0[1]))
    # Inactive at step 1: the carry is the identity, exactly.
    jacobian = torch.autograd.functional.jacobian(lambda h: module(x[1:2], (h, state0[1]))[1][0][0, 0, part], h0)
    torch.testing.assert_close(jacobian[:, 0, 0, part], torch.eye(5), rtol=0, atol=0)
    # A loss at step 2 on that unit reaches step 0's state through step 1.
    out2, _ = module(x[2:3], state1)
    (grad,) = torch.autograd.grad(out2[0, 0, part].sum(), h0)
    assert grad[0, 0, part].abs().sum() > 0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("rows", [None, 2], ids=["one-row", "input-set"])
@pytest.mark.parametrize("value_size", [3, 4], ids=["projected-values", "folded-values"])
def test_gradcheck_float64(cell, rows, value_size):
    torch.manual_seed(9)
    module = small(cell, input_size=3, unit_size=2, num_units=3, k_active=2, input_value_size=value_size).double()
    shape = (3, 2, 3) if rows is None else (3, 2, rows, 3)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    h = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]

    def fn(x, h, c, *params):
        output, (h_out, c_out) = functional_call(module, dict(zip(names, params, strict=True)), (x, (h, c)))
        return output, h_out, c_out

    # The active set must not flip inside gradcheck's perturbations: check that first.
    active = module.forward_with_details(x, (h, c))[2].active
    assert torch.autograd.gradcheck(fn, (x, h, c, *params), eps=1e-6, atol=1e-5)
    assert torch.equal(module.forward_with_details(x, (h, c))[2].active, active)


def _graph_names(tensor: torch.Tensor, depth: int = 6) -> set[str]:
    names, frontier = set(), [tensor.grad_fn]
    for _ in range(depth):
        frontier = [node for node in frontier if node is not None]
        names |= {type(node).__name__ for node in frontier}
        frontier = [parent for node in frontier for parent, _ in node.next_functions]
    return names


class _CountingLoop:
    """Stands in for the compiled module and counts the calls that reach it."""

    def __init__(self, module) -> None:
        self.module, self.calls = module, {"forward_loop": 0, "backward_loop": 0}

    def __getattr__(self, name):
        def call(*args):
            self.calls[name] += 1
            return getattr(self.module, name)(*args)

        return call


@pytest.mark.parametrize("rows", [None, 3], ids=["one-row", "input-set"])
@pytest.mark.parametrize("variant", [{}, {"communication": False}, {"k_active": 5}, FOLDED])
def test_hand_written_step_backward_is_the_derivative_of_the_step(variant, rows):
    """``step_backward`` differentiates ``rims_step`` itself: for one step in float64, the state
    gradients it returns, and the weight, key and value gradients assembled from its per-step
    gradients, equal what autograd finds through ``rims_step``."""
    torch.manual_seed(22)
    module = small(**variant).double()
    spec = module._spec()
    shape = (1, 4, module.input_size) if rows is None else (1, 4, rows, module.input_size)
    keys, values, weight_ih = module._input_side(torch.randn(*shape, dtype=torch.float64))
    plain = module._step_weights(weight_ih)
    weights = type(plain)(*(None if w is None else w.detach().clone().requires_grad_(True) for w in plain))
    inputs = StepInputs(keys[0].detach().requires_grad_(True), values[0].detach().requires_grad_(True))
    h = torch.randn(5, 4, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 4, 5, dtype=torch.float64, requires_grad=True)
    h_next, c_next, saved = rims_step(spec, weights, inputs, h, c, save=True)
    dh, dc = torch.randn_like(h_next), torch.randn_like(c_next)
    leaves = {"h": h, "c": c, "keys": inputs.keys, "values": inputs.values}
    leaves |= {name: w for name, w in weights._asdict().items() if w is not None}
    loss = (h_next * dh).sum() + (c_next * dc).sum()
    expected = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))

    step = step_factors(spec, saved) | {name: saved[name] for name in ("qkv", "comm_attention") if name in saved}
    transposed = type(weights)(*(None if w is None or w.dim() < 3 else w.detach().transpose(1, 2) for w in weights))
    d_h, d_c, grads = step_backward(spec, dh, dc, step, inputs, transposed)
    found = {"h": d_h, "c": d_c}
    found["hidden_weight"] = h.transpose(1, 2) @ grads["projected"]
    found["hidden_bias"] = grads["projected"].sum(1, keepdim=True)
    found["weight_ih"] = saved["readout"].transpose(1, 2) @ grads["projected"][..., : spec.gates]
    d_readout = grads["readout"].view(5, 4, spec.input_heads, -1)
    if rows is None:
        found["keys"] = (grads["scores"].unsqueeze(-1) * saved["q"]).sum(0)
        found["values"] = (d_readout * saved["p"].unsqueeze(-1)).sum(0).view(4, -1)
    else:  # the scores' and the attention's last dimension is the rows, the null row first
        found["keys"] = torch.einsum("kbhn,kbhd->bnhd", grads["scores"], saved["q"])
        found["values"] = torch.einsum("kbhn,kbhv->bnhv", saved["p"], d_readout)
    if spec.communication:
        found["comm_qkv"] = saved["h_mix"].transpose(1, 2) @ grads["qkv"]
        found["comm_output"] = saved["read"].transpose(1, 2) @ grads["out"]
        found["comm_output_bias"] = grads["out"].sum(1, keepdim=True)
    assert set(found) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(found[name], value, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
        assert value.abs().sum() > 0, name


@pytest.mark.parametrize("loop", ["compiled", "python"])
@pytest.mark.parametrize(
    ("variant", "steps", "rows"),
    [
        ({}, 9, None),
        ({"communication": False}, 9, None),
        ({"k_active": 5}, 9, None),
        ({}, 3, None),
        (FOLDED, 9, None),
        ({}, 9, 3),
        ({"communication": False}, 9, 3),
        ({"k_active": 5}, 3, 3),
    ],
)
def test_fused_time_loop_equals_eager_autograd(variant, steps, rows, loop, monkeypatch):
    """The hand-written backward of ``rims_rl.loop.FusedLoop`` (taken for LSTM cells reading one input row or
    a set, without dropout) gives the values and every gradient of plain autograd through the per-step ops
    (``forward_with_details`` always takes that path), with resets and a given state; both for the
    compiled loop (``rims_rl/csrc``, which must build here) and for the Python one. Three steps: the
    compiled loop reads its weights in place instead of repacking them."""
    compiled = native.loop()
    assert compiled is not None, "the compiled RIMs loop did not build"
    counting = _CountingLoop(compiled)
    monkeypatch.setattr(rims_loop, "_compiled", lambda tensor: counting if loop == "compiled" else None)
    torch.manual_seed(21)
    module = small(**variant).double()
    shape = (steps, 4, module.input_size) if rows is None else (steps, 4, rows, module.input_size)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 4, module.hidden_size, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, 4, module.hidden_size, dtype=torch.float64, requires_grad=True)
    starts = torch.zeros(steps, 4)
    starts[0, 2] = starts[steps // 2, 1] = starts[steps // 2, 3] = 1.0
    weights = torch.randn(steps, 4, module.hidden_size, dtype=torch.float64)
    results = []
    for path in ("fused", "eager"):
        module.zero_grad()
        if path == "fused":
            output, (h, c) = module(x, (h0, c0), starts)
            assert "FusedLoopBackward" in _graph_names(output)
        else:
            output, (h, c), _ = module.forward_with_details(x, (h0, c0), starts)
            assert "FusedLoopBackward" not in _graph_names(output)
        loss = (output * weights).sum() + (h * 0.5).sum() + c.pow(2).sum()
        inputs = (x, h0, c0, *module.parameters())
        results.append((output, h, c, *torch.autograd.grad(loss, inputs)))
    names = ["output", "h", "c", "x", "h0", "c0"] + [name for name, _ in module.named_parameters()]
    for name, fused, eager in zip(names, *results, strict=True):
        torch.testing.assert_close(fused, eager, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")
        assert fused.abs().sum() > 0, name
    expected = (
        {"forward_loop": 1, "backward_loop": 1} if loop == "compiled" else {"forward_loop": 0, "backward_loop": 0}
    )
    assert counting.calls == expected


@pytest.mark.parametrize(("steps", "batch", "rows"), [(128, 2, None), (2, 8, None), (64, 2, 49), (2, 8, 49)])
def test_compiled_loop_matches_python_loop_at_the_rl_shape(steps, batch, rows, monkeypatch):
    """At the PPO shapes in float32 (6 units x 100, k_active 4; a minibatch of two sequences of 128
    steps with a reset, and two acting steps of 8 envs, where the compiled loop reads its weights in
    place; also with the Nature CNN's set of 49 rows) the compiled loop and the Python loop agree on
    outputs, final state and every gradient; and with ``RIMS_RL_NATIVE=0`` the compiled one is not called."""
    torch.manual_seed(4)
    module = RIMs(64, 100, 6, 4, input_dropout=0.0, comm_dropout=0.0)
    x = torch.randn(steps, batch, *(() if rows is None else (rows,)), 64, requires_grad=True)
    starts = torch.zeros(steps, batch)
    starts[0] = starts[steps * 5 // 9, 1] = 1.0
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv("RIMS_RL_NATIVE", setting)
        output, (h, c) = module(x, None, starts)
        loss = output.pow(2).sum() + h.sum() + c.sum()
        results.append((output, h, c, *torch.autograd.grad(loss, (x, *module.parameters()))))
    for compiled, python in zip(*results, strict=True):
        torch.testing.assert_close(compiled, python, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # acting: the loop keeps no per-step tensors
        acting = []
        for setting in ("1", "0"):
            monkeypatch.setenv("RIMS_RL_NATIVE", setting)
            acting.append(module(x, None, starts)[0])
    torch.testing.assert_close(*acting, rtol=1e-4, atol=1e-5)
    assert native.loop() is None
    monkeypatch.setenv("RIMS_RL_NATIVE", "1")
    assert native.loop() is not None


def test_a_loop_that_cannot_build_warns_once_and_the_python_loop_runs(tmp_path, monkeypatch):
    """No compiler, broken headers, a read-only cache: one warning naming the cause, then the same
    results from the Python loop, and no second attempt in the process."""
    broken = tmp_path / "rims_loop.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "_SOURCE", broken)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setenv("RIMS_RL_BUILD_DIR", str(tmp_path / "build"))
    torch.manual_seed(5)
    module = small(k_active=2)
    x = torch.randn(5, 3, module.input_size)
    with pytest.warns(RuntimeWarning, match="compiled RIMs loop is unavailable"):
        output, _ = module(x)
    reference, _, _ = module.forward_with_details(x)
    torch.testing.assert_close(output, reference)
    assert native.loop() is None and native._tried


def test_state_stays_bounded_under_large_weights():
    """The bounded communication residual keeps |h| < 2 (LSTM cell in (-1, 1) plus a gated tanh),
    however large the weights and however long the run: inactive units cannot feed a growing h
    back through communication."""
    torch.manual_seed(18)
    module = small(k_active=2)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(20.0)
    output, (_h, _) = module(torch.randn(300, 4, 6) * 10)
    assert torch.isfinite(output).all()
    assert output.abs().max() < 2.0


# ---------------------------------------------------------------------------- ablations


def test_without_communication_an_active_unit_ignores_other_units():
    torch.manual_seed(10)
    x = torch.randn(1, 3, 6)
    h = torch.randn(1, 3, 25)
    c = torch.randn(1, 3, 25)
    moved_h = h.clone()
    moved_h[..., 15:20] += 1.0  # unit 3
    isolated = small(k_active=5, communication=False)
    a, _ = isolated(x, (h, c))
    b, _ = isolated(x, (moved_h, c))
    assert torch.equal(a[..., :15], b[..., :15]) and torch.equal(a[..., 20:], b[..., 20:])
    torch.manual_seed(10)
    talking = small(k_active=5)
    a, _ = talking(x, (h, c))
    b, _ = talking(x, (moved_h, c))
    assert not torch.allclose(a[..., :15], b[..., :15])


@pytest.mark.parametrize("variant", [{"input_attention": False, "k_active": 2}, {"k_active": 5}])
def test_every_unit_updates_every_step(variant):
    torch.manual_seed(11)
    module = small(**variant)
    x = torch.randn(5, 2, module.input_size)
    _, _, details = module.forward_with_details(x)
    assert details.active.all()
    _, states = run_steps(module, x)
    for before, after in itertools.pairwise(states):
        changed = unit_slices(after[0], module) != unit_slices(before[0], module)
        assert changed.any(-1).all()


def test_without_input_attention_units_read_the_input_directly():
    torch.manual_seed(12)
    module = small(input_attention=False)
    assert module.weight_ih.shape == (5, module.input_size, 20)
    names = {name for name, _ in module.named_parameters()}
    assert not names & {"input_key", "input_value", "input_query"}
    _, _, details = module.forward_with_details(torch.randn(2, 1, 6))
    assert details.input_attention.shape[-1] == 0


# ---------------------------------------------------------------------------- determinism, devices


def test_seeded_construction_and_dropout_are_deterministic():
    x = torch.randn(6, 3, 6)
    outputs = []
    for _ in range(2):
        torch.manual_seed(13)
        module = small(input_dropout=0.3, comm_dropout=0.3).train()
        torch.manual_seed(14)
        outputs.append(module(x)[0])
    assert torch.equal(outputs[0], outputs[1])
    torch.manual_seed(15)
    assert not torch.equal(module(x)[0], outputs[0])  # dropout is live in training mode


def test_dropout_masks_are_those_torch_dropout_draws():
    x = torch.randn(5, 7)
    torch.manual_seed(3)
    expected = torch.nn.functional.dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(x * dropout_mask(x, 0.3), expected)


def test_dropout_is_off_in_eval_mode():
    torch.manual_seed(16)
    module = small(input_dropout=0.5, comm_dropout=0.5).eval()
    x = torch.randn(4, 2, 6)
    assert torch.equal(module(x)[0], module(x)[0])


def test_dtype_follows_the_module():
    module = small().to(torch.float64)
    output, (h, c) = module(torch.randn(3, 2, 6, dtype=torch.float64))
    assert output.dtype == h.dtype == c.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    torch.manual_seed(17)
    module = small().double()
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    cpu, _ = module(x)
    gpu, _ = module.cuda()(x.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_paper_defaults_and_lstm_like_attributes():
    module = RIMs(512, unit_size=100, num_units=6, k_active=4)
    assert (module.hidden_size, module.num_layers, module.input_size) == (600, 1, 512)
    assert (module.input_heads, module.input_key_size) == (4, 64)
    assert module.input_heads * module.input_value_size == 400  # input values 4 x unit size
    assert (module.comm_heads, module.comm_key_size, module.comm_value_size) == (4, 32, 32)
    assert module.input_dropout == module.comm_dropout == 0.1
    bound = 1 / math.sqrt(100)
    assert module.weight_hh.abs().max() <= bound


# ---------------------------------------------------------------------------- bad input


def test_forget_bias_sets_every_units_forget_gate_and_nothing_else():
    torch.manual_seed(0)
    plain = RIMs(5, unit_size=4, num_units=3, k_active=3, input_dropout=0.0, comm_dropout=0.0)
    torch.manual_seed(0)
    biased = RIMs(5, unit_size=4, num_units=3, k_active=3, input_dropout=0.0, comm_dropout=0.0, forget_bias=50.0)
    assert "forget_bias=50" in repr(biased)
    forget = torch.zeros(16, dtype=torch.bool)
    forget[4:8] = True  # gates are (i, f, g, o) per unit
    for name, value in biased.state_dict().items():
        if name in ("bias_ih", "bias_hh"):
            assert torch.equal(value[:, ~forget], plain.state_dict()[name][:, ~forget])
        else:
            assert torch.equal(value, plain.state_dict()[name]), name  # the same draws otherwise
    # The forget gate saturated open, and the input gate shut: every unit is active and keeps c.
    x = torch.randn(6, 3, 5)
    state = (torch.zeros(1, 3, 12), torch.randn(1, 3, 12))
    _, (_, c_plain) = plain(x, state)
    assert not torch.allclose(c_plain, state[1], atol=1e-3)
    with torch.no_grad():
        biased.bias_ih[:, :4] = -50.0
    _, (_, c_kept) = biased(x, state)
    torch.testing.assert_close(c_kept, state[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_active": 0}, "k_active"),
        ({"k_active": 6}, "k_active"),
        ({"k_active": 2.0}, "k_active"),
        ({"unit_size": 0}, "unit_size"),
        ({"num_units": -1}, "num_units"),
        ({"input_heads": 0}, "input_heads"),
        ({"cell": "rnn"}, "cell"),
        ({"input_dropout": 1.0}, "input_dropout"),
        ({"forget_bias": float("nan")}, "forget_bias"),
        ({"forget_bias": True}, "forget_bias"),
        ({"cell": "gru", "forget_bias": 5.0}, "forget_bias needs LSTM cells"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(**kwargs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m(torch.randn(3, 2, 7)), "input_size=6"),
        (lambda m: m(torch.randn(3, 6)), r"\(T, B, input_size\)"),
        (lambda m: m(torch.randn(3, 2, 6), (torch.zeros(1, 3, 25), torch.zeros(1, 3, 25))), "state h"),
        (lambda m: m(torch.randn(3, 2, 6), torch.zeros(1, 2, 25)), "tuple"),
        (lambda m: m(torch.randn(3, 2, 6), None, torch.zeros(3, 3)), "episode_starts"),
        (lambda m: m(torch.randn(3, 2, 6, dtype=torch.float64)), "float64 on cpu, but the module is torch.float32"),
    ],
)
def test_bad_inputs_raise_before_any_work(call, message):
    with pytest.raises(ValueError, match=message):
        call(small())
