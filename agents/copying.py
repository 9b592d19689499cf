"""The paper's copying task (Goyal et al., ICLR 2021, Sec. 4.1, Tables 1 and 5, Figure 2): the whole experiment.

It reads top to bottom: the data, the model, the evaluation on fixed held-out sequences, the training loop
with its checkpoints (the run layer of :mod:`rims_rl.agents.checkpointing`: a locked folder, atomic
checkpoints of tensors and plain data, an exact resume), and the report (a Table-1-shaped Markdown table,
the curves, and a RIMs model's activation pattern over one sequence, the paper's Figure 2). Every default
lives in ``configs/copying.yaml``; the ablation grids are sweeps of it (``configs/sweeps/copying_*.yaml``).

**Two scales of cross-entropy.** We score the recall steps only (the digits to reproduce; chance is
ln 9 = 2.197). The authors' code averages the cross-entropy over every step of the sequence, the blanks it
also predicts included. Our model reads out at the recall steps alone, so the report gives their scale as
the recall CE times ``digits / T`` (T = 2 digits + span + 1): the same number if the blank steps cost
nothing, which a model that can copy learns at once. The recall-step scale is the stricter one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from rims_rl.agents.checkpointing import (
    RunLock,
    atomic_write,
    check_finite,
    check_resume,
    load_checkpoint,
    remove_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rims_rl.agents.config import ConfigError, CopyingConfig, CoreConfig, load, to_dict
from rims_rl.cores import build_core
from rims_rl.rims import RIMs
from rims_rl.utils import resolve_device

__all__ = [
    "CopyingModel",
    "activation_figure",
    "all_steps_ce",
    "build_model",
    "collect_results",
    "copying_batch",
    "copying_state",
    "ensure_copying",
    "evaluate",
    "format_table",
    "load_copying_config",
    "plot_curves",
    "run_copying",
    "write_report",
]

BLANK, INDICATOR = 0, 9
VOCAB = 10  # input symbols: digits 0-8 (0 doubles as the blank) and the indicator 9
CLASSES = 9  # targets: the digits 0-8
# What a resumed copying run may change: its budget and how it runs, not what it trains.
MUTABLE = ("train.updates", "train.eval_every", "run.device", "run.progress", "run.models", "run.out")


# ------------------------------------------------------------------------------------- data and model


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


def sequence_length(digits: int, span: int) -> int:
    return 2 * digits + span + 1


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


def held_out(config: CopyingConfig, device: torch.device) -> dict[int, tuple[Tensor, Tensor]]:
    """The fixed evaluation sequences of each span, from their own seeds: the same for every model and run
    (nothing is tuned on them)."""
    sets = {}
    for span in config.task.eval_spans:
        generator = torch.Generator().manual_seed(10_000 + span)
        inputs, targets = copying_batch(config.train.eval_sequences, config.task.digits, span, generator)
        sets[span] = (inputs.to(device), targets.to(device))
    return sets


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


# ------------------------------------------------------------------------------------- training


def _checkpoint(out_dir: Path, name: str) -> Path:
    return out_dir / "checkpoints" / f"{name}.pt"


def _experiment(config: CopyingConfig, name: str) -> dict[str, Any]:
    """What defines one model's training (the resume contract compares it)."""
    return {"task": to_dict(config.task), "train": to_dict(config.train), "run": to_dict(config.run), "model": name}


def _train_one(name: str, config: CopyingConfig, out_dir: Path) -> dict[str, Any]:
    spec, task, train = config.models[name], config.task, config.train
    device = resolve_device(config.run.device)
    torch.manual_seed(config.run.seed)
    model = build_model(spec, task.digits).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
    data = torch.Generator().manual_seed(config.run.seed)
    eval_sets = held_out(config, device)
    path = _checkpoint(out_dir, name)
    state = {"update": 0, "seconds": 0.0, "history": []}
    if path.is_file():
        saved = load_checkpoint(path, "copying", device)
        now = {**_experiment(config, name), "spec": to_dict(spec)}
        check_resume({**saved["experiment"], "spec": saved["spec"]}, now, MUTABLE)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        data.set_state(saved["data_rng"])
        set_rng_state(saved["rng"])
        state = saved["state"]

    parameters = sum(p.numel() for p in model.parameters())
    bar = tqdm(
        total=train.updates, initial=state["update"], desc=name, disable=not config.run.progress, dynamic_ncols=True
    )
    model.train()
    while state["update"] < train.updates:
        started = time.perf_counter()
        inputs, targets = copying_batch(train.batch_size, task.digits, task.train_span, data)
        logits = model(inputs.to(device))
        loss = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten())
        check_finite(
            [loss], lambda value=loss: f"{name}: the loss is {value.item()} at update {state['update']}; {path} is kept"
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
            payload = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "data_rng": data.get_state(),
                "rng": rng_state(),
                "state": state,
                "spec": to_dict(spec),
                "experiment": _experiment(config, name),
            }
            save_checkpoint(path, "copying", payload)
    bar.close()
    if isinstance(model.core, RIMs):
        activation_figure(model, config, out_dir / f"{name}-activations.png", name)
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
        "digits": task.digits,
    }


def load_copying_config(source="copying.yaml", overrides=()) -> CopyingConfig:
    """The copying config (a file, a packaged name or a mapping) with ``(key, value)`` overrides, checked
    in full: its keys and values, the device, and every model's settings."""
    config = load(CopyingConfig, source, overrides)
    unknown = sorted(set(config.run.models or ()) - set(config.models))
    if unknown:
        raise ConfigError(f"run.models: unknown {', '.join(unknown)}; the config has {', '.join(config.models)}")
    return config


def copying_state(out_dir: str | Path) -> str:
    """What bringing the copying run in ``out_dir`` to completion means: ``"done"`` (it has its results),
    ``"resume"`` (a model has a checkpoint) or ``"train"``."""
    out_dir = Path(out_dir)
    if (out_dir / "results.json").is_file():
        return "done"
    return "resume" if list((out_dir / "checkpoints").glob("*.pt")) else "train"


def ensure_copying(config: CopyingConfig) -> str:
    """Bring the copying run of ``config`` to completion, whatever state it is in (what sweeps call):
    ``"done"`` (it has its results), ``"resumed"`` or ``"trained"``."""
    state = copying_state(config.run.out)
    if state == "done":
        return "done"
    run_copying(config, resume=state == "resume")
    return "resumed" if state == "resume" else "trained"


def run_copying(config: CopyingConfig, resume: bool = False) -> list[dict[str, Any]]:
    """Train the models of ``config`` (``run.models``, else all) into ``run.out``, continuing from their
    checkpoints with ``resume`` (refused without it when the folder holds a run), then write the report."""
    out_dir = Path(config.run.out)
    names = config.run.models or list(config.models)
    with RunLock(out_dir):
        held = [name for name in names if _checkpoint(out_dir, name).is_file()]
        if held and not resume:
            raise ConfigError(f"{out_dir} already holds a copying run ({', '.join(held)}); continue it with --resume")
        remove_temporaries(out_dir)
        atomic_write(out_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False).encode())
        results = [_train_one(name, config, out_dir) for name in names]
        write_report(results, config.task.eval_spans, out_dir)
    return results


# ------------------------------------------------------------------------------------- report


def all_steps_ce(recall_ce: float, digits: int, span: int) -> float:
    """The authors' scale: a recall-step CE averaged over every step of the sequence, the blank steps at
    zero cost (see the module docstring)."""
    return recall_ce * digits / sequence_length(digits, span)


def format_table(results: Iterable[Mapping[str, Any]], spans: list[int]) -> str:
    """The measured results as a Markdown table shaped like the paper's Table 1 (both CE scales)."""
    header = ["model", "parameters"]
    header += [f"CE at {span}, recall steps" for span in spans]
    header += [f"CE at {span}, all steps" for span in spans]
    header += ["updates", "train wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        ce = {int(span): value for span, value in row["eval_ce"].items()}
        recall = [f"{ce[span]:.3f}" for span in spans]
        scaled = [f"{all_steps_ce(ce[span], row['digits'], span):.4f}" for span in spans]
        minutes = row["train_seconds"] / 60
        cells = [row["model"], f"{row['parameters']:,}", *recall, *scaled, str(row["updates"]), f"{minutes:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(results: Iterable[Mapping[str, Any]], spans: list[int], path: Path, title: str = "") -> None:
    """CE at each span (one panel each) against updates, one line per model, on the recall-step scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(spans), figsize=(5.5 * len(spans), 4), squeeze=False)
    for axis, span in zip(axes[0], spans, strict=True):
        for row in results:
            updates = [entry["update"] for entry in row["history"]]
            values = [{int(k): v for k, v in entry["eval_ce"].items()}[span] for entry in row["history"]]
            axis.plot(updates, values, label=row["model"])
        axis.axhline(math.log(CLASSES), color="grey", linestyle=":", label="chance (ln 9)")
        axis.set_yscale("log")
        axis.set_xlabel("updates")
        axis.set_ylabel(f"held-out CE at span {span} (recall steps)")
        axis.set_title(f"{title} span {span}".strip())
        axis.legend(fontsize="small")
    figure.tight_layout()
    buffer = _png(figure)
    plt.close(figure)
    atomic_write(path, buffer)


def _png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


@torch.no_grad()
def activation_figure(model: CopyingModel, config: CopyingConfig, path: Path, name: str) -> dict[str, Any]:
    """The paper's Figure 2: which units are active at each step of one held-out sequence at the training
    span (units x steps, active in black), with the digits, the dormant span and the indicator marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits, span = config.task.digits, config.task.train_span
    inputs, _ = copying_batch(1, digits, span, torch.Generator().manual_seed(20_000))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    _, _, details = model.core.forward_with_details(F.one_hot(inputs.to(device), VOCAB).float())
    model.train(was_training)
    active = details.active[:, 0].cpu().numpy()  # (T, K)
    steps, units = active.shape
    width = max(6.0, steps * 0.09)
    figure, (phases, axis) = plt.subplots(
        2, 1, figsize=(width, 0.45 * units + 2.0), sharex=True, gridspec_kw={"height_ratios": [1, max(units, 2)]}
    )
    # The sequence's phases above the raster: digits, dormant span, indicator, recall.
    spans = [
        ("digits", 0, digits, "tab:blue"),
        ("dormant span", digits, digits + span, "tab:grey"),
        ("9", digits + span, digits + span + 1, "tab:red"),  # the indicator
        ("recall", digits + span + 1, steps, "tab:green"),
    ]
    for label, start, end, colour in spans:
        phases.axvspan(start - 0.5, end - 0.5, color=colour, alpha=0.6)
        if end - start >= 3 or label == "9":
            phases.text((start + end - 1) / 2, 0.5, label, ha="center", va="center", fontsize="small")
    phases.set_yticks([])
    phases.set_title(f"{name}: active units (black) over one sequence, span {span}", fontsize="medium")
    axis.imshow(active.T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    axis.set_xlabel("step")
    axis.set_ylabel("unit")
    axis.set_yticks(range(units))
    figure.tight_layout()
    data = _png(figure)
    plt.close(figure)
    atomic_write(path, data)
    return {"png": str(path), "active_per_step": float(active.sum(1).mean())}


def write_report(results: list[Mapping[str, Any]], spans: list[int], out_dir: Path, title: str = "") -> None:
    """``results.json``, ``results.md`` (the table) and ``curves.png`` in ``out_dir``."""
    table = format_table(results, spans)
    chance = math.log(CLASSES)
    atomic_write(out_dir / "results.json", json.dumps(results, indent=2).encode())
    note = (
        f"Chance level: CE = ln 9 = {chance:.3f} on the recall steps. 'All steps' is the authors' scale: the "
        "recall CE times digits / sequence length, the blank steps counted at zero cost, so a lower bound on "
        "what the authors' code would print (rims_rl.agents.copying).\n"
    )
    atomic_write(out_dir / "results.md", (table + "\n\n" + note).encode())
    plot_curves(results, spans, out_dir / "curves.png", title)


def collect_results(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """The results of finished copying runs ``<out>/<variant>/seed<N>``, for one table over a grid (the
    sweep's report): each row named by its variant (and model, when a run trained several)."""
    rows = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / "results.json"
        if not path.is_file():
            continue
        found = json.loads(path.read_text())
        for row in found:
            name = run_dir.parent.name if len(found) == 1 else f"{run_dir.parent.name}: {row['model']}"
            rows.append({**row, "model": f"{name} ({run_dir.name})"})
    return rows
