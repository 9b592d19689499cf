"""wandb tracking for a training run: offline unless an API key is configured, never fatal.

SB3 metrics reach wandb through TensorBoard syncing (``sync_tensorboard``), so ``wandb.init`` runs
before SB3 creates its TensorBoard writer. Runs of one environment share a wandb group, and the
run name is ``<label>-seed<N>`` (label ``<algo>-<policy>`` unless ``run.label`` names it), so RIMs
and LSTM curves of a game overlay in one view.
"""

from __future__ import annotations

import netrc
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from rims_rl.agents.config import TrainConfig, to_dict
from rims_rl.agents.runs import run_label
from rims_rl.envs import env_name

__all__ = ["Tracking", "start_tracking", "wandb_mode"]


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; ``online`` with an API key (env or ``~/.netrc``); else ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


@dataclass
class Tracking:
    """An open wandb run and the SB3 callback that uploads the final model."""

    run: Any
    callback: BaseCallback

    def finish(self) -> None:
        try:
            self.run.finish()
        except Exception as error:  # tracking must never fail a training run
            warnings.warn(f"wandb: could not finish the run cleanly: {error}", stacklevel=2)


def start_tracking(config: TrainConfig, run_dir: Path) -> Tracking | None:
    """Open a wandb run for this training run, or warn and return None if wandb cannot start."""
    try:
        import wandb
        from wandb.integration.sb3 import WandbCallback

        label = run_label(config.algo, config.policy, config.run.label)
        run = wandb.init(
            project=config.run.wandb_project,
            group=env_name(config.env.id),
            name=f"{label}-seed{config.run.seed}",
            config=to_dict(config),
            dir=str(run_dir),
            mode=wandb_mode(),
            sync_tensorboard=True,
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=60, silent=True),
        )
        callback = WandbCallback(model_save_path=str(run_dir / "wandb_model"), verbose=0)
        return Tracking(run, callback)
    except Exception as error:
        warnings.warn(f"wandb tracking is off for this run: {error}", stacklevel=2)
        return None
