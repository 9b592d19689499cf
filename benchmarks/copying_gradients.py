"""How much gradient reaches the digits of a copying sequence, for every model of the copying tables.

    python benchmarks/copying_gradients.py [--seeds 0 1 2] [--trained [--runs runs/copying]] [--forget-bias 1 3 5]

A model can only learn to copy if the loss at the recall steps sends gradient back across the dormant span
to the steps where the digits were shown. For every model of ``sweeps/copying_table1.yaml`` and
``sweeps/copying_table5.yaml`` (read from the sweep files, so the variants are defined once), built as its
run builds it from each seed, this takes one batch of the training span, backpropagates the recall-step
loss to the one-hot inputs and prints the mean gradient norm per sequence at the digit steps and at the
recall steps. The batch is fixed (its own generator), training mode as in training (dropout live). The
figures scale with 1 / (batch x digits), the loss being a mean: compare them within one table. It also
prints the norm of the whole parameter gradient, which is what the runs' clipping (``train.grad_clip``)
compares with its threshold, and for an LSTM core the forget gates over the dormant span: their mean, the
share above 0.99 (saturated open) and how much of the cell state survives the span (the product of the
forget gates, averaged over units), the factor the gradient crossing the span through the cell gets.

``--trained`` also probes each run's last checkpoint where there is one (the model as trained so far), which
tells a run that is still stuck why; ``--runs`` is the folder that holds the sweeps' outputs (``table1``,
``table5``).

``--forget-bias B ...`` probes every model at initialisation again with its cells' forget-gate bias set to
each B (the cores' ``forget_bias`` argument, the LSTM and every RIMs unit alike; the other weights are
drawn as without it): does the bias, and not the model, decide whether gradient reaches the digits?
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from torch.nn import functional as F

from rims_rl.agents.checkpointing import load_checkpoint
from rims_rl.agents.config import to_dict
from rims_rl.agents.copying import VOCAB, _checkpoint, build_model, copying_batch, load_copying_config
from rims_rl.agents.sweep import load_sweep
from rims_rl.cores import LSTMCore

SWEEPS = ("sweeps/copying_table1.yaml", "sweeps/copying_table5.yaml")


def lstm_forget_gates(core: LSTMCore, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The forget gates (T, B, H) an ``LSTMCore`` used at every step, from its weights, inputs and outputs."""
    previous = torch.cat([torch.zeros_like(output[:1]), output[:-1]])
    gates = x @ core.weight_ih_l0.T + core.bias_ih_l0 + previous @ core.weight_hh_l0.T + core.bias_hh_l0
    return torch.sigmoid(gates[..., core.hidden_size : 2 * core.hidden_size])


def probe(model, inputs, targets, digits: int, span: int) -> dict[str, float]:
    """Mean gradient norm of the recall-step loss w.r.t. the one-hot inputs at the digit steps and at the
    recall steps, the norm of the parameter gradient, and an LSTM core's forget gates on the blanks."""
    model.train()
    model.zero_grad(set_to_none=True)
    x = F.one_hot(inputs, VOCAB).float().requires_grad_(True)
    output, _ = model.core(x)
    logits = model.head(output[-digits:])
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    per_step = x.grad.norm(dim=-1).mean(1)  # (T,)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    result = {
        "digit": per_step[:digits].mean().item(),
        "recall": per_step[-digits:].mean().item(),
        "params": torch.nn.utils.get_total_norm(grads).item(),  # the norm clip_grad_norm_ compares
    }
    if isinstance(model.core, LSTMCore):
        with torch.no_grad():
            forget = lstm_forget_gates(model.core, x, output)[digits : digits + span]  # the dormant span
        result["forget"] = forget.mean().item()
        result["saturated"] = (forget > 0.99).float().mean().item()
        result["survives"] = forget.prod(0).mean().item()
    return result


def row(run: str, name: str, seed: int, updates: str, result: dict[str, float], clip: float) -> str:
    digit, recall = result["digit"], result["recall"]
    ratio = f"{recall / digit:.1e}" if digit > 0 else "inf (none reaches the digits)"
    clipped = "clipped" if result["params"] > clip else "not clipped"
    if "forget" in result:
        gates = f"{result['forget']:.3f}, {result['saturated']:.0%} > 0.99, {result['survives']:.1e} survives"
    else:
        gates = "-"
    return (
        f"| {run} | {name} | {seed} | {updates} | {digit:.1e} | {recall:.1e} | {ratio} | "
        f"{result['params']:.2f} ({clipped}) | {gates} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="initialisations probed per model")
    parser.add_argument("--trained", action="store_true", help="also probe each run's last checkpoint")
    parser.add_argument("--runs", default="runs/copying", help="where the sweeps' output folders are")
    parser.add_argument(
        "--forget-bias",
        type=float,
        nargs="+",
        default=[],
        help="also probe each model at initialisation with its cells' forget-gate bias set to each of these values",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(
        "| run | model | seed | updates (forget bias) | digit steps | recall steps | recall / digit "
        "| parameter gradient norm | LSTM forget gates on the blanks |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for sweep_file in SWEEPS:
        out = Path(args.runs) / Path(load_sweep(sweep_file).out).name
        for run in load_sweep(sweep_file, out=out).runs:
            config = load_copying_config(run.config)
            task, clip = config.task, config.train.grad_clip
            inputs, targets = copying_batch(
                config.train.batch_size, task.digits, task.train_span, torch.Generator().manual_seed(123)
            )
            for name in config.run.models or list(config.models):
                checkpoint = _checkpoint(Path(run.run_dir), name)  # where the run keeps it
                probes = [(seed, None, None) for seed in args.seeds]
                probes += [(seed, None, bias) for bias in args.forget_bias for seed in args.seeds]
                if args.trained and checkpoint.is_file():
                    saved = load_checkpoint(checkpoint, "copying")
                    if saved["spec"] != to_dict(config.models[name]):
                        parser.error(f"{checkpoint} holds another model than {sweep_file} defines: {saved['spec']}")
                    probes.append((config.run.seed, saved, None))
                for seed, saved, bias in probes:
                    torch.manual_seed(seed)  # the initialisation, then the dropout masks of the probe
                    spec = config.models[name]
                    if bias is not None:  # the core's own setting, drawn as the run draws it otherwise
                        spec = dataclasses.replace(spec, settings={**spec.settings, "forget_bias": bias})
                    model = build_model(spec, task.digits)
                    updates = "0" if bias is None else f"0 ({bias:g})"
                    if saved is not None:
                        model.load_state_dict(saved["model"])
                        updates = f"{saved['state']['update']:,}"
                    result = probe(model, inputs, targets, task.digits, task.train_span)
                    print(row(run.name, name, seed, updates, result, clip))


if __name__ == "__main__":
    main()
