"""Read a long run's records back, as the tests do on tiny runs: each step once and in order in
``progress.csv`` and TensorBoard, evaluations never repeated, no (metric, step) twice in the wandb offline
record, one wandb run id and group.

    python tests/check_records.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from tests.test_runs import logged_steps, tensorboard_steps, wandb_run  # the readers the tests use


def report(run: Path) -> list[str]:
    steps, board = logged_steps(run), tensorboard_steps(run)
    evaluations = np.load(run / "evaluations.npz")["timesteps"].tolist() if (run / "evaluations.npz").exists() else []
    wandb = wandb_run(run)
    pairs = wandb["pairs"]
    sessions = len(list(run.glob("wandb/offline-run-*")))
    return [
        str(run),
        f"  progress.csv: {len(steps)} rows, each step once and in order: {steps == sorted(set(steps))}, "
        f"last {steps[-1]}",
        f"  TensorBoard time/fps: {len(board)} points, each once: {len(board) == len(set(board))}, "
        f"the csv's steps: {sorted(board) == steps}",
        f"  evaluations: {evaluations}, none twice: {len(evaluations) == len(set(evaluations))}",
        f"  wandb: {sessions} sessions, run ids {sorted(wandb['ids'])}, groups {sorted(wandb['groups'])}, "
        f"{len(pairs)} (metric, step) pairs, none twice: {len(pairs) == len(set(pairs))}, "
        f"last step {max((step for _, step in pairs), default=None)}",
    ]


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print("\n".join(report(Path(argument))))
