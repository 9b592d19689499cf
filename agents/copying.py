"""The paper's copying task (Goyal et al., ICLR 2021, Sec. 4.1, Table 1): RIMs against an LSTM.

The whole experiment reads top to bottom: data, model, evaluation, training with checkpoints, and
the Table-1-shaped report. Every default lives in ``configs/copying.yaml``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from rims_rl.agents.config import ConfigError, CopyingConfig, CoreConfig, load, to_dict
from rims_rl.cores import build_core
from rims_rl.utils import atomic_save, resolve_device

__all__ = ["CopyingModel", "build_model", "copying_batch", "evaluate", "load_copying_config", "run_copying"]

BLANK, INDICATOR = 0, 9
VOCAB = 10  # input symbols: digits 0-8 (0 doubles as the blank) and the indicator 9
CLASSES = 9  # targets: the digits 0-8


def copying_batch(batch: int, digits: int, span: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One batch of copying sequences.

    Returns ``inputs`` (T, B) with T = 2 * digits + span + 1 (digits, ``span`` blanks, the
    indicator, ``digits`` blanks) and ``targets`` (digits, B): the digits, to be produced at the
    last ``digits`` steps.
    """
    targets = torch.randint(0, CLASSES, (digits, batch), generator=generator)
    inputs = torch.full((2 * digits + span + 1, batch), BLANK, dtype=torch.long)
    inputs[:digits] = targets
    inputs[digits + span] = INDICATOR
    return inputs, targets


class CopyingModel(nn.Module):
    """One-hot symbols -> recurrent core -> linear read-out at the recall steps."""

    def __init__(self, core: nn.Module, digits: int) -> None:
        super().__init__()
        self.core = core
        self.digits = digits
        self.head = nn.Linear(core.hidden_size, CLASSES)

    def forward(self, inputs: Tensor) -> Tensor:
        """``inputs`` (T, B) symbols -> logits (digits, B, 9) for the recall steps."""
        output, _ = self.core(F.one_hot(inputs, VOCAB).float())
        return self.head(output[-self.digits :])


def build_model(spec: CoreConfig, digits: int) -> CopyingModel:
    """A :class:`CopyingModel` from one ``models.<name>`` config entry."""
    return CopyingModel(build_core(spec.core, VOCAB, spec.settings), digits)


@torch.no_grad()
def evaluate(model: CopyingModel, eval_sets: Mapping[int, tuple[Tensor, Tensor]], batch: int) -> dict[int, float]:
    """Mean cross-entropy on the recall steps for each span's fixed held-out set."""
    was_training = model.training
    model.eval()
    results = {}
    for span, (inputs, targets) in eval_sets.items():
        total = 0.0
        for start in range(0, inputs.shape[1], batch):
            logits = model(inputs[:, start : start + batch])
            chunk = targets[:, start : start + batch]
            total += F.cross_entropy(logits.flatten(0, 1), chunk.flatten(), reduction="sum").item()
        results[span] = total / targets.numel()
    model.train(was_training)
    return results


def _train_one(
    name: str,
    spec: CoreConfig,
    config: CopyingConfig,
    out_dir: Path,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    task, train = config.task, config.train
    device = resolve_device(config.run.device)
    torch.manual_seed(config.run.seed)
    model = build_model(spec, task.digits).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
    data = torch.Generator().manual_seed(config.run.seed)
    # Held-out sets come from their own seeds, the same for every model and every run.
    eval_sets = {}
    for span in task.eval_spans:
        held_out = torch.Generator().manual_seed(10_000 + int(span))
        inputs, targets = copying_batch(train.eval_sequences, task.digits, int(span), held_out)
        eval_sets[int(span)] = (inputs.to(device), targets.to(device))

    checkpoint_path = out_dir / f"{name}.pt"
    state = {"update": 0, "seconds": 0.0, "history": []}
    if resume and checkpoint_path.is_file():
        try:
            saved = torch.load(checkpoint_path, map_location=device, weights_only=False)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        except Exception as error:
            raise ConfigError(f"cannot resume from {checkpoint_path}: {error}") from None
        data.set_state(saved["data_rng"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]

    parameters = sum(p.numel() for p in model.parameters())
    bar = tqdm(total=train.updates, initial=state["update"], desc=name, disable=not progress, dynamic_ncols=True)
    model.train()
    while state["update"] < train.updates:
        started = time.perf_counter()
        inputs, targets = copying_batch(train.batch_size, task.digits, task.train_span, data)
        logits = model(inputs.to(device))
        loss = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{name}: loss is {loss.item()} at update {state['update']}; the last checkpoint "
                f"({checkpoint_path}) is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        state["update"] += 1
        state["seconds"] += time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if state["update"] % train.eval_every == 0 or state["update"] == train.updates:
            scores = evaluate(model, eval_sets, train.batch_size)
            state["history"].append({"update": state["update"], "train_ce": loss.item(), "eval_ce": scores})
            bar.set_postfix(loss=f"{loss.item():.3f}", **{f"ce{span}": f"{ce:.3f}" for span, ce in scores.items()})
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "data_rng": data.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "state": state,
                    "spec": to_dict(spec),
                },
                checkpoint_path,
            )
    bar.close()
    final = state["history"][-1]["eval_ce"] if state["history"] else evaluate(model, eval_sets, train.batch_size)
    return {
        "model": name,
        "spec": to_dict(spec),
        "parameters": parameters,
        "updates": state["update"],
        "train_seconds": state["seconds"],
        "eval_ce": {int(span): ce for span, ce in final.items()},
        "history": state["history"],
        "device": str(device),
    }


def load_copying_config(source="copying.yaml", overrides=()) -> CopyingConfig:
    """The copying config (a file, a packaged name or a mapping) with ``(key, value)`` overrides, checked
    in full: its keys and values, the device, and every model's settings."""
    return load(CopyingConfig, source, overrides)


def format_table(results: list[dict[str, Any]], spans: list[int]) -> str:
    """The measured results as a Markdown table shaped like the paper's Table 1."""
    header = ["model", "parameters", *[f"CE at {span}" for span in spans], "updates", "train wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        ces = [f"{row['eval_ce'][int(span)]:.3f}" for span in spans]
        minutes = row["train_seconds"] / 60
        lines.append(
            f"| {row['model']} | {row['parameters']:,} | "
            + " | ".join(ces)
            + f" | {row['updates']} | {minutes:.1f} min |"
        )
    return "\n".join(lines)


def run_copying(config: CopyingConfig, resume: bool = False) -> list:
    """Train every model in ``config.models`` into ``config.run.out``; write ``results.json`` and ``results.md``."""
    out_dir = Path(config.run.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    progress = config.run.progress
    results = [_train_one(name, spec, config, out_dir, resume, progress) for name, spec in config.models.items()]
    spans = [int(span) for span in config.task.eval_spans]
    table = format_table(results, spans)
    chance = math.log(CLASSES)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(table + f"\n\nChance level: CE = ln 9 = {chance:.3f}.\n")
    return results
