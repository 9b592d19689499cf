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
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from rims_rl.config import ConfigError, require
from rims_rl.rims import RIMs
from rims_rl.utils import atomic_save, resolve_device

__all__ = ["CopyingModel", "build_model", "copying_batch", "evaluate", "run_copying"]

BLANK, INDICATOR = 0, 9
VOCAB = 10  # input symbols: digits 0-8 (0 doubles as the blank) and the indicator 9
CLASSES = 9  # targets: the digits 0-8
TASK_KEYS = ("digits", "train_span", "eval_spans")
TRAIN_KEYS = ("updates", "batch_size", "lr", "grad_clip", "eval_every", "eval_sequences", "seed", "device")


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


def build_model(spec: Mapping[str, Any], digits: int) -> CopyingModel:
    """A :class:`CopyingModel` from one ``models.<name>`` config entry."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    try:
        if kind == "rims":
            core = RIMs(VOCAB, **spec)
        elif kind == "lstm":
            forget_bias = spec.pop("forget_bias", 0.0)
            core = nn.LSTM(VOCAB, **spec)
            with torch.no_grad():
                size = core.hidden_size
                core.bias_ih_l0[size : 2 * size] = forget_bias
                core.bias_hh_l0[size : 2 * size] = 0.0
        else:
            raise ConfigError(f"model kind must be rims or lstm, got {kind!r}")
    except TypeError as error:  # an unknown keyword for the core
        raise ConfigError(f"model {kind}: {error}") from None
    return CopyingModel(core, digits)


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
    spec: Mapping[str, Any],
    config: Mapping[str, Any],
    out_dir: Path,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    task, train = config["task"], config["train"]
    device = resolve_device(train["device"])
    torch.manual_seed(train["seed"])
    model = build_model(spec, task["digits"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train["lr"])
    data = torch.Generator().manual_seed(train["seed"])
    # Held-out sets come from their own seeds, the same for every model and every run.
    eval_sets = {}
    for span in task["eval_spans"]:
        held_out = torch.Generator().manual_seed(10_000 + int(span))
        inputs, targets = copying_batch(train["eval_sequences"], task["digits"], int(span), held_out)
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
    bar = tqdm(total=train["updates"], initial=state["update"], desc=name, disable=not progress, dynamic_ncols=True)
    model.train()
    while state["update"] < train["updates"]:
        started = time.perf_counter()
        inputs, targets = copying_batch(train["batch_size"], task["digits"], task["train_span"], data)
        logits = model(inputs.to(device))
        loss = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{name}: loss is {loss.item()} at update {state['update']}; the last checkpoint "
                f"({checkpoint_path}) is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
        optimizer.step()
        state["update"] += 1
        state["seconds"] += time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if state["update"] % train["eval_every"] == 0 or state["update"] == train["updates"]:
            scores = evaluate(model, eval_sets, train["batch_size"])
            state["history"].append({"update": state["update"], "train_ce": loss.item(), "eval_ce": scores})
            bar.set_postfix(loss=f"{loss.item():.3f}", **{f"ce{span}": f"{ce:.3f}" for span, ce in scores.items()})
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "data_rng": data.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "state": state,
                    "spec": dict(spec),
                },
                checkpoint_path,
            )
    bar.close()
    final = state["history"][-1]["eval_ce"] if state["history"] else evaluate(model, eval_sets, train["batch_size"])
    return {
        "model": name,
        "spec": dict(spec),
        "parameters": parameters,
        "updates": state["update"],
        "train_seconds": state["seconds"],
        "eval_ce": {int(span): ce for span, ce in final.items()},
        "history": state["history"],
        "device": str(device),
    }


def check_config(config: Mapping[str, Any]) -> None:
    """Fail before any training on a config that lacks or misnames keys."""
    require(config, "task", TASK_KEYS)
    require(config, "train", TRAIN_KEYS)
    resolve_device(config["train"]["device"])
    if not isinstance(config.get("models"), dict) or not config["models"]:
        raise ConfigError("config section 'models' must map model names to their settings")
    for name, spec in config["models"].items():
        if not isinstance(spec, dict):
            raise ConfigError(f"models.{name} must be a mapping")
        # Building the model validates every argument, before the long work starts.
        build_model(spec, config["task"]["digits"])


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


def run_copying(config: Mapping[str, Any], out_dir: str | Path, resume: bool = False, progress: bool = True) -> list:
    """Train every model in ``config["models"]``; write ``results.json`` and ``results.md``."""
    check_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    results = [_train_one(name, spec, config, out_dir, resume, progress) for name, spec in config["models"].items()]
    spans = [int(span) for span in config["task"]["eval_spans"]]
    table = format_table(results, spans)
    chance = math.log(CLASSES)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(table + f"\n\nChance level: CE = ln 9 = {chance:.3f}.\n")
    return results
