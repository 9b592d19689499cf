"""Training logs that are live and stay exact across stops: every logged step once, in order.

Every row SB3 dumps (one per rollout, and one per evaluation) is written at once (:class:`RunLog`, an SB3
log output format): a line of ``progress.csv``, scalars in ``tensorboard/`` and, with tracking, a point of
the wandb run, each at the row's environment step. So curves grow while a run trains, from its first
rollout on.

A run that stops (a signal, a crash, kill -9) resumes from its last checkpoint and takes again the steps
after it, so the record is cut back to the checkpoint first (``RunLog(resume_from=step)``):

- ``progress.csv`` keeps its rows up to that step (rewritten atomically; a line a kill cut short goes too);
- TensorBoard's new writer starts with ``purge_step`` = step + 1, which tells TensorBoard to drop what the
  earlier files hold from there on;
- wandb cannot take a point back (offline, its record only grows; online, rewinding a run is a server
  feature), so the steps it already has are not sent again: the last step sent is kept in the run folder
  (``wandb_step``, see :mod:`rims_rl.agents.tracking`), and the resumed run takes the steps up to it again
  from the checkpoint's random state without sending them.

Files: ``progress.csv`` (one row per step; the header is the union of every row's keys) and
``tensorboard/`` (a new events file per session).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.logger import KVWriter

from rims_rl.agents.checkpointing import atomic_write
from rims_rl.agents.runs import read_rows

__all__ = ["CSV_NAME", "STEP_KEY", "TENSORBOARD_DIR", "RunLog"]

CSV_NAME = "progress.csv"
TENSORBOARD_DIR = "tensorboard"
STEP_KEY = "time/total_timesteps"


def _plain(value: Any) -> Any:
    """A logged value as plain data (numpy scalars become numbers); other kinds are not kept."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return None


def _step(row: dict[str, Any]) -> int | None:
    """A CSV row's step, or None for a line a stop cut short."""
    value = row.get(STEP_KEY)
    try:
        return None if value is None else int(float(value))
    except ValueError:
        return None


class RunLog(KVWriter):
    """An SB3 log output writing each row as it comes to ``progress.csv``, TensorBoard and wandb.

    Args:
        run_dir: the run folder.
        resume_from: the step training starts from: the record is cut back to it (see the module
            docstring); 0 for a run that starts afresh (also in a folder a stop left without a checkpoint).
        tracking: the run's wandb tracking (:class:`rims_rl.agents.tracking.Tracking`), or None.
        tensorboard: write TensorBoard files too.
    """

    def __init__(self, run_dir: str | Path, resume_from: int = 0, tracking=None, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CSV_NAME
        self.tracking = tracking
        self.resume_from = resume_from
        on_disk = read_rows(self.path)
        # A line a stop cut short has no newline at its end (and may lack fields): it goes, and so do the
        # rows past the step training starts from.
        cut = bool(on_disk) and not self.path.read_bytes().endswith(b"\n")
        whole = on_disk[:-1] if cut else on_disk
        rows = [row for row in whole if None not in row and None not in row.values() and _step(row) is not None]
        kept = [row for row in rows if _step(row) <= resume_from]
        if len(kept) != len(on_disk):
            self._rewrite(kept)
        rows = kept
        self.rows: list[dict[str, Any]] = rows
        self.keys = list(dict.fromkeys(key for row in rows for key in row))
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=resume_from + 1)

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        row = {}
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            plain = _plain(value)
            if plain is not None and not ("csv" in excluded and "tensorboard" in excluded):
                row[key] = plain
        row[STEP_KEY] = int(step)
        self._write_csv(row)
        values = {key: value for key, value in row.items() if key != STEP_KEY and not isinstance(value, str)}
        if self._tensorboard is not None:
            for key, value in values.items():
                self._tensorboard.add_scalar(key, value, int(step), new_style=True)
            self._tensorboard.flush()
        if self.tracking is not None and int(step) > self.tracking.sent_up_to:
            self.tracking.log(values, int(step))

    def _write_csv(self, row: dict[str, Any]) -> None:
        last = self.rows[-1] if self.rows else None
        if last is not None and _step(last) == row[STEP_KEY] and not (set(last) & set(row)) - {STEP_KEY}:
            last.update(row)  # another dump at the same step (an evaluation's): one row per step
            self._rewrite(self.rows)
            return
        self.rows.append(row)
        if set(row) - set(self.keys) or not self.path.is_file():
            self._rewrite(self.rows)  # a new column: the header changes
            return
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=self.keys, restval="", lineterminator="\n").writerow(row)
        with self.path.open("a", newline="") as handle:  # one line, one write
            handle.write(buffer.getvalue())

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        """``progress.csv`` as ``rows``, atomically, with the union of their keys as the header."""
        self.keys = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.keys, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path, buffer.getvalue().encode())

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Write rows held by a checkpoint of an earlier version (which wrote logs only at checkpoints) that
        the files do not have yet."""
        last = _step(self.rows[-1]) if self.rows else None
        for row in rows:
            if (last is None or row[STEP_KEY] > last) and row[STEP_KEY] <= self.resume_from:
                self.write({k: v for k, v in row.items() if k != STEP_KEY}, {}, row[STEP_KEY])

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
