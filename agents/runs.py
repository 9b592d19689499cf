"""Where a training run lives and the name it is grouped under: one definition for every runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rims_rl.envs import env_name

__all__ = ["run_dir_for", "run_label", "run_state"]


def run_label(config: dict[str, Any]) -> str:
    """The name a run is grouped under in folders, plots and wandb: ``run.label``, else ``<algo>-<policy>``."""
    return config["run"].get("label") or f"{config['algo']}-{config['policy']}"


def run_dir_for(config: dict[str, Any]) -> Path:
    """``<out>/<env>/<label>/seed<N>``, the label being ``<algo>-<policy>`` unless ``run.label`` names it."""
    run = config["run"]
    return Path(run["out"]) / env_name(config["env"]["id"]) / run_label(config) / f"seed{run['seed']}"


def run_state(run_dir: str | Path) -> str:
    """What bringing the run in ``run_dir`` to completion means now: ``"done"`` (it has its final
    model), ``"resume"`` (it has a checkpoint) or ``"train"`` (from scratch)."""
    run_dir = Path(run_dir)
    if (run_dir / "model.zip").is_file():
        return "done"
    return "resume" if (run_dir / "checkpoints" / "latest.pt").is_file() else "train"
