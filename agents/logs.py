"""Training logs that stay exact across stops: every logged step once, in order, whatever stopped the run.

SB3 writes each log row as soon as it is dumped; a run stopped after that but before its next checkpoint
would log the same steps again when it resumes. Here rows wait in memory (:class:`HeldOutput`, an SB3 log
output format) and reach the disk only once a checkpoint holds the state they describe
(:meth:`HeldOutput.commit`, called right after the checkpoint is written). The rows not yet on disk travel
inside the checkpoint too (:meth:`HeldOutput.pending`), so a stop between the checkpoint and the commit
loses nothing: the resumed run writes them first.

Files: ``progress.csv`` (one row per dump; the header is the union of every row's keys) and
``tensorboard/`` (SB3's TensorBoard writer, a new events file per session). wandb reads that folder
(``sync_tensorboard``), so it sees each step once too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.logger import KVWriter, TensorBoardOutputFormat

from rims_rl.agents.checkpointing import atomic_write

__all__ = ["CSV_NAME", "TENSORBOARD_DIR", "HeldOutput"]

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


class HeldOutput(KVWriter):
    """An SB3 log output that holds rows until :meth:`commit`, then writes them to ``progress.csv`` and
    TensorBoard in ``run_dir``."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []
        self._tensorboard = TensorBoardOutputFormat(str(self.run_dir / TENSORBOARD_DIR)) if tensorboard else None

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        row = {}
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            plain = _plain(value)
            if plain is not None and not ("csv" in excluded and "tensorboard" in excluded):
                row[key] = plain
        row[STEP_KEY] = int(step)
        last = self.rows[-1] if self.rows else None
        if last is not None and last[STEP_KEY] == row[STEP_KEY] and not (set(last) & set(row)) - {STEP_KEY}:
            last.update(row)  # another dump at the same step (an evaluation's): one row per step
        else:
            self.rows.append(row)

    def pending(self) -> list[dict[str, Any]]:
        """The rows not yet written (plain data, for a checkpoint)."""
        return [dict(row) for row in self.rows]

    def commit(self, up_to: int, extra: Iterable[dict[str, Any]] = ()) -> None:
        """Write ``extra`` rows (held by a checkpoint) and the held rows up to step ``up_to`` that the files do
        not have yet; keep the later ones held."""
        last = last_step(self.run_dir)
        rows = [r for r in [*extra, *self.rows] if r[STEP_KEY] <= up_to and (last is None or r[STEP_KEY] > last)]
        self.rows = [r for r in self.rows if r[STEP_KEY] > up_to]
        if not rows:
            return
        _append_csv(self.run_dir / CSV_NAME, rows)
        if self._tensorboard is not None:
            for row in rows:
                values = {k: v for k, v in row.items() if k != STEP_KEY and not isinstance(v, str)}
                self._tensorboard.write(values, dict.fromkeys(values), row[STEP_KEY])

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def last_step(run_dir: Path) -> int | None:
    """The last step ``progress.csv`` holds, or None."""
    rows = read_rows(Path(run_dir) / CSV_NAME)
    return int(float(rows[-1][STEP_KEY])) if rows else None


def _append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The file's rows and ``rows``, rewritten atomically with the union of their keys as the header."""
    existing = read_rows(path)
    keys = list(dict.fromkeys(key for row in [*existing, *rows] for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(existing)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode())
