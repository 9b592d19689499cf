"""How much gradient reaches the digits of a copying sequence, for every model of the copying tables.

    python benchmarks/copying_gradients.py [--seeds 0 1 2] [--trained [--runs runs/copying]]

A model can only learn to copy if the loss at the recall steps sends gradient back across the dormant span
to the steps where the digits were shown. For every model of ``sweeps/copying_table1.yaml`` and
``sweeps/copying_table5.yaml`` (read from the sweep files, so the variants are defined once), built as its
run builds it from each seed, this takes one batch of the training span, backpropagates the recall-step
loss to the one-hot inputs and prints the mean gradient norm per sequence at the digit steps and at the
recall steps. The batch is fixed (its own generator), training mode as in training (dropout live). The
figures scale with 1 / (batch x digits), the loss being a mean: compare them within one table.

``--trained`` also probes each run's last checkpoint where there is one (the model as trained so far), which
tells a run that is still stuck why; ``--runs`` is the folder that holds the sweeps' outputs (``table1``,
``table5``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

from rims_rl.agents.checkpointing import load_checkpoint
from rims_rl.agents.config import to_dict
from rims_rl.agents.copying import VOCAB, _checkpoint, build_model, copying_batch, load_copying_config
from rims_rl.agents.sweep import load_sweep

SWEEPS = ("sweeps/copying_table1.yaml", "sweeps/copying_table5.yaml")


def digit_and_recall_gradient(model, inputs, targets, digits: int) -> tuple[float, float]:
    """Mean gradient norm of the recall-step loss w.r.t. the one-hot inputs at the digit steps and at the
    recall steps."""
    model.train()
    x = F.one_hot(inputs, VOCAB).float().requires_grad_(True)
    output, _ = model.core(x)
    logits = model.head(output[-digits:])
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    per_step = x.grad.norm(dim=-1).mean(1)  # (T,)
    return per_step[:digits].mean().item(), per_step[-digits:].mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="initialisations probed per model")
    parser.add_argument("--trained", action="store_true", help="also probe each run's last checkpoint")
    parser.add_argument("--runs", default="runs/copying", help="where the sweeps' output folders are")
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("| run | model | seed | updates | digit steps | recall steps | recall / digit |")
    print("|---|---|---|---|---|---|---|")
    for sweep_file in SWEEPS:
        out = Path(args.runs) / Path(load_sweep(sweep_file).out).name
        for run in load_sweep(sweep_file, out=out).runs:
            config = load_copying_config(run.config)
            task = config.task
            inputs, targets = copying_batch(
                config.train.batch_size, task.digits, task.train_span, torch.Generator().manual_seed(123)
            )
            for name in config.run.models or list(config.models):
                checkpoint = _checkpoint(Path(run.run_dir), name)  # where the run keeps it
                probes = [(seed, None) for seed in args.seeds]
                if args.trained and checkpoint.is_file():
                    saved = load_checkpoint(checkpoint, "copying")
                    if saved["spec"] != to_dict(config.models[name]):
                        parser.error(f"{checkpoint} holds another model than {sweep_file} defines: {saved['spec']}")
                    probes.append((config.run.seed, saved))
                for seed, saved in probes:
                    torch.manual_seed(seed)  # the initialisation, then the dropout masks of the probe
                    model = build_model(config.models[name], task.digits)
                    updates = 0
                    if saved is not None:
                        model.load_state_dict(saved["model"])
                        updates = saved["state"]["update"]
                    digit, recall = digit_and_recall_gradient(model, inputs, targets, task.digits)
                    ratio = f"{recall / digit:.1e}" if digit > 0 else "inf (none reaches the digits)"
                    print(f"| {run.name} | {name} | {seed} | {updates:,} | {digit:.1e} | {recall:.1e} | {ratio} |")


if __name__ == "__main__":
    main()
