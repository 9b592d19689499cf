"""Where a training run lives and the name it is grouped under: one definition for every runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rims_rl.envs import env_name

__all__ = ["run_dir_for", "run_label"]


def run_label(config: dict[str, Any]) -> str:
    """The name a run is grouped under in folders, plots and wandb: ``run.label``, else ``<algo>-<policy>``."""
    return config["run"].get("label") or f"{config['algo']}-{config['policy']}"


def run_dir_for(config: dict[str, Any]) -> Path:
    """``<out>/<env>/<label>/seed<N>``, the label being ``<algo>-<policy>`` unless ``run.label`` names it."""
    run = config["run"]
    return Path(run["out"]) / env_name(config["env"]["id"]) / run_label(config) / f"seed{run['seed']}"
