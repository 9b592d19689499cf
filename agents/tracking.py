"""wandb tracking for a training run: offline unless an API key is configured, never fatal.

- **Live, each metric once per step.** The run's log output (:class:`rims_rl.agents.logs.RunLog`) sends
  every row to wandb as it writes it to ``progress.csv`` and TensorBoard, from the first rollout on. After
  a resume, the steps wandb already has are not sent again (a wandb record cannot be cut back; see
  :mod:`rims_rl.agents.logs`). wandb's own files live in ``<run>/wandb/``.
- **One group per curve.** The group is ``<env>/<label>`` (label: ``run.label`` or ``<algo>-<policy>``):
  the seeds of one policy on one environment aggregate into one line, and RIMs and LSTM are two lines of
  the same chart. The environment is the job type and a tag; the run's name is ``<label>-seed<N>``.
- **Environment steps on the x-axis** (``global_step``).
- **The config is the run's config** (what ``config.yaml`` holds), not SB3's internals.
- **A resumed run continues the same wandb run**: its id is kept in ``<run>/wandb_id``, and the last step
  sent to it in ``<run>/wandb_step`` (never lowered), so that steps wandb has are not sent again after a
  resume (:mod:`rims_rl.agents.logs`).
"""

from __future__ import annotations

import netrc
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rims_rl.agents.checkpointing import atomic_write
from rims_rl.agents.config import TrainConfig, to_dict
from rims_rl.agents.runs import run_label
from rims_rl.envs import env_name

__all__ = ["ID_FILE", "STEP_FILE", "Tracking", "start_tracking", "wandb_mode"]

ID_FILE = "wandb_id"
STEP_FILE = "wandb_step"


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
    """An open wandb run, and the last environment step sent to it (by this session or one before)."""

    run: Any
    step_file: Path
    sent_up_to: int = -1

    def log(self, values: dict[str, float], step: int) -> None:
        """One row of metrics at environment step ``step``."""
        try:
            self.run.log({**values, "global_step": step})
        except Exception as error:  # tracking must never fail a training run
            warnings.warn(f"wandb: could not log step {step}: {error}", stacklevel=2)
            return
        self.sent_up_to = max(self.sent_up_to, step)
        atomic_write(self.step_file, f"{self.sent_up_to}\n".encode())

    def finish(self) -> None:
        try:
            self.run.finish()
        except Exception as error:  # tracking must never fail a training run
            warnings.warn(f"wandb: could not finish the run cleanly: {error}", stacklevel=2)


def _last_sent(step_file: Path) -> int:
    """The last step a session before sent to wandb (-1 when none, or the file is unreadable)."""
    try:
        return int(step_file.read_text().strip())
    except (OSError, ValueError):
        return -1


def start_tracking(config: TrainConfig, run_dir: Path) -> Tracking | None:
    """Open (or, for a resumed run, reopen) the wandb run of this training run; warn and return None if
    wandb cannot start."""
    try:
        import wandb

        env, label = env_name(config.env.id), run_label(config.algo, config.policy, config.run.label)
        id_file = Path(run_dir) / ID_FILE
        continued = id_file.is_file()
        run_id = id_file.read_text().strip() if continued else uuid.uuid4().hex[:12]
        run = wandb.init(
            project=config.run.wandb_project,
            id=run_id,
            resume="allow",
            group=f"{env}/{label}",
            job_type=env,
            tags=[env, label, config.algo, config.policy],
            name=f"{label}-seed{config.run.seed}",
            config=to_dict(config),
            dir=str(run_dir),
            mode=wandb_mode(),
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=60, silent=True),
        )
        run.define_metric("global_step")
        run.define_metric("*", step_metric="global_step")
        atomic_write(id_file, f"{run_id}\n".encode())
        step_file = Path(run_dir) / STEP_FILE
        return Tracking(run, step_file, _last_sent(step_file) if continued else -1)
    except Exception as error:
        warnings.warn(f"wandb tracking is off for this run: {error}", stacklevel=2)
        return None
