"""Run folders: where a training run lives, the name it is grouped under, and what it has recorded.

One definition for every runner, and light on purpose (YAML, CSV and numpy; no torch, no SB3):
``compare`` and ``report`` read run folders through this module without loading any policy code.
A run folder ``<out>/<env>/<label>/seed<N>/`` holds ``config.yaml``, ``progress.csv`` and ``tensorboard/``
(each step once, up to the last checkpoint), ``evaluations.npz``, ``checkpoints/latest.pt`` and, once
finished, ``model.zip``.
"""

from __future__ import annotations

import csv
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.agents.config import ConfigError, parse_yaml, read_text
from rims_rl.envs import env_name

__all__ = [
    "CHECKPOINT",
    "RunBusy",
    "RunDiverged",
    "RunError",
    "check_writable",
    "find_runs",
    "learning_curve",
    "read_config",
    "read_evaluations",
    "read_rows",
    "run_dir_for",
    "run_label",
    "run_state",
]


class RunError(RuntimeError):
    """A run that cannot go on (a full disk, a diverged model): one line and exit status 1 on the command
    line; its last good checkpoint is kept."""


class RunDiverged(RunError):
    """A parameter or the loss became NaN or infinite; the last good checkpoint is kept."""


class RunBusy(ConfigError):
    """Another process holds the run folder (:class:`rims_rl.agents.checkpointing.RunLock`)."""


# A run folder's checkpoint (rims_rl.agents.checkpointing's format), relative to the folder.
CHECKPOINT = Path("checkpoints") / "latest.pt"


def run_label(algo: str, policy: str, label: str | None) -> str:
    """The name a run is grouped under in folders, plots and wandb: ``run.label``, else ``<algo>-<policy>``."""
    return label or f"{algo}-{policy}"


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and make sure a file can be written in it; one line if not. Every command
    that writes into a folder it was given calls this before any work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise ConfigError(f"{folder} is a file, not a folder: choose another --out") from None
    except NotADirectoryError:
        raise ConfigError(f"{folder}: a part of this path is a file, not a folder: choose another --out") from None
    except OSError as error:
        raise ConfigError(f"cannot write in {folder} ({error.strerror}): choose another --out") from None


def run_dir_for(config) -> Path:
    """``<out>/<env>/<label>/seed<N>`` of a :class:`~rims_rl.agents.config.TrainConfig`."""
    run = config.run
    label = run_label(config.algo, config.policy, run.label)
    return Path(run.out) / env_name(config.env.id) / label / f"seed{run.seed}"


def run_state(run_dir: str | Path) -> str:
    """What bringing the run in ``run_dir`` to completion means now: ``"done"`` (it has its final
    model), ``"resume"`` (it has a checkpoint) or ``"train"`` (from scratch)."""
    run_dir = Path(run_dir)
    if (run_dir / "model.zip").is_file():
        return "done"
    return "resume" if (run_dir / CHECKPOINT).is_file() else "train"


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (holding config.yaml) given directly or anywhere below the given folders."""
    runs = []
    paths = list(paths)
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"no such run folder: {path}")
        found = [path] if (path / "config.yaml").is_file() else sorted(p.parent for p in path.rglob("config.yaml"))
        runs.extend(found)
    if not runs:
        raise ConfigError("no run folders (with config.yaml) found in " + ", ".join(map(str, paths)))
    return runs


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``config.yaml`` as plain data, with what readers of records use from it (``algo``,
    ``policy``, ``env.id``, ``run``) checked; the rest is not (reading a record needs no schema)."""
    path = run_dir / "config.yaml"
    config = parse_yaml(read_text(path), str(path))
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path} is not a mapping")
    for key, kind, what in (("algo", str, "a name"), ("policy", str, "a name"), ("env", Mapping, "a mapping")):
        if not isinstance(config.get(key), kind):
            raise ConfigError(f"{path}: {key} is missing or not {what}; this is not a training run's record")
    if not isinstance(config["env"].get("id"), str) or not isinstance(config.get("run", {}), Mapping):
        raise ConfigError(f"{path}: env.id or run is missing or of the wrong kind; this is not a training run's record")
    return dict(config)


EVALUATIONS = ("timesteps", "results", "ep_lengths")


def read_evaluations(path: Path) -> dict[str, np.ndarray] | None:
    """A run's periodic evaluations (``evaluations.npz``, SB3's EvalCallback file: ``timesteps`` (n,),
    ``results`` and ``ep_lengths`` (n, episodes)), or None when there is none. A damaged or foreign file is
    one ``ConfigError``; nothing in it is unpickled."""
    if not path.exists():
        return None
    try:
        with np.load(path) as data:  # allow_pickle stays off: arrays only
            arrays = {key: np.asarray(data[key]) for key in EVALUATIONS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not a readable evaluations file ({detail}); move it away to go on") from None
    steps, results, lengths = (arrays[key] for key in EVALUATIONS)
    numeric = all(np.issubdtype(array.dtype, np.number) for array in arrays.values())
    if not numeric or steps.ndim != 1 or results.ndim != 2 or lengths.shape != results.shape:
        raise ConfigError(f"{path}: its arrays are not evaluations (steps (n,), results and lengths (n, episodes))")
    if results.shape[0] != len(steps):
        raise ConfigError(f"{path}: {len(steps)} evaluation steps but {results.shape[0]} rows of results")
    return arrays


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``progress.csv`` (none when there is no file); one ``ConfigError`` for a file that
    is not text."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{path}: not a readable training log ({type(error).__name__})") from None


def learning_curve(run_dir: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, returns) of one run: training episodes (``rollout/ep_rew_mean`` in progress.csv, each a
    mean over SB3's last 100 episodes) or periodic evaluations (evaluations.npz, mean over episodes)."""
    if source == "eval":
        path = run_dir / "evaluations.npz"
        data = read_evaluations(path)
        if data is None:
            return np.empty(0), np.empty(0)
        return _in_order(path, data["timesteps"].astype(float)), data["results"].mean(axis=1)
    steps, returns = [], []
    path = run_dir / "progress.csv"
    for line, row in enumerate(read_rows(path), start=2):
        step, value = row.get("time/total_timesteps"), row.get("rollout/ep_rew_mean")
        if step not in (None, "") and value not in (None, ""):
            try:
                steps.append(float(step))
                returns.append(float(value))
            except ValueError:
                raise ConfigError(f"{path}, line {line}: a step or return that is not a number") from None
    return _in_order(path, np.asarray(steps)), np.asarray(returns)


def _in_order(path: Path, steps: np.ndarray) -> np.ndarray:
    """``steps``, refused in one line unless strictly increasing: a record that repeats steps would plot a
    curve that was never trained (runs written before resumes kept records exact)."""
    backwards = np.nonzero(np.diff(steps) <= 0)[0]
    if len(backwards):
        at = backwards[0]
        raise ConfigError(
            f"{path}: step {steps[at + 1]:.0f} follows step {steps[at]:.0f}; this record repeats steps "
            "(written by a version of rims-rl before exact resumes)"
        )
    return steps


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat |= _flatten(value, f"{prefix}{key}.")
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def first_difference(
    a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = ()
) -> tuple[str, Any, Any] | None:
    """The first dotted key (in sorted order) where two configs differ, with its two values (None where a
    config lacks it), leaving out keys under ``ignore`` (dotted prefixes); None where they agree."""
    ignore = tuple(ignore)
    before, after = _flatten(a), _flatten(b)
    for key in sorted(set(before) | set(after)):
        if any(key == i or key.startswith(f"{i}.") for i in ignore):
            continue
        if before.get(key) != after.get(key):
            return key, before.get(key), after.get(key)
    return None
