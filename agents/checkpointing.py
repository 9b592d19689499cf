"""The run layer every long job shares (training, the copying task, imitation, sweep workers).

- **One writer per folder**: :class:`RunLock`, an OS lock (``flock``) on ``<folder>/.lock``. The kernel
  releases it when the process ends, however it ends, so a ``kill -9`` never leaves a folder stuck; a
  second process on a held folder stops at once with one line naming the holder's pid.
- **One atomic write**: :func:`atomic_write` serialises in memory, writes a temporary file beside the
  target, ``fsync`` s it and renames it over the target, so a crash leaves either the old file or the new
  one. A full disk is a :class:`RunError` naming the file and that the previous one is kept;
  :func:`remove_temporaries` clears what an interrupted write left.
- **One checkpoint format**: :func:`save_checkpoint` / :func:`load_checkpoint`, a dict of tensors and plain
  data (numbers, strings, lists, dicts) read back with ``torch.load(weights_only=True)``: opening a run
  folder never runs code from it. :func:`rng_state` / :func:`set_rng_state` hold every random stream
  (torch, CUDA, numpy, Python) in that form.
- **One divergence error**: :class:`RunDiverged`.
- **One resume contract**: a checkpoint records the config that defines the experiment; :func:`check_resume`
  accepts only changes that leave the experiment the same (budget, device, tracking, progress, evaluation
  and checkpoint cadence) and refuses anything else in one line naming the key.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rims_rl.agents.config import ConfigError
from rims_rl.agents.runs import RunBusy, RunDiverged, RunError, check_writable, first_difference

__all__ = [
    "CHECKPOINT_FORMAT",
    "RunBusy",
    "RunDiverged",
    "RunError",
    "RunLock",
    "atomic_write",
    "check_resume",
    "load_checkpoint",
    "plain",
    "remove_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

# Bumped when a checkpoint's layout changes; a checkpoint of another format is refused in one line.
CHECKPOINT_FORMAT = 2
LOCK_NAME = ".lock"
_TEMPORARY = ".tmp"


# ------------------------------------------------------------------------------------- one writer


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` (the folder is created), held until :meth:`release`
    or the end of the process. Raises :class:`RunBusy` naming the holder's pid if it is held."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        check_writable(self.folder)
        path = self.folder / LOCK_NAME
        try:
            self._handle = open(path, "a+")  # noqa: SIM115 (held for the lock's lifetime)
        except OSError as error:  # a folder, or something else that is no file, where the lock belongs
            raise ConfigError(f"{path}: cannot be the run's lock file ({error.strerror}); move it away") from None
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "unknown"
            self._handle.close()
            raise RunBusy(
                f"{self.folder} is in use by another process (pid {holder}); wait for it, or stop it"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"{os.getpid()}\n")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------------- one atomic write


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMPORARY, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
            raise RunError(f"disk full while writing {path} ({kept}); free space and resume") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left under ``folder``."""
    removed = []
    for path in Path(folder).rglob(f".*{_TEMPORARY}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ------------------------------------------------------------------------------------- one format


def rng_state() -> dict[str, Any]:
    """Every random stream a run draws from (torch, CUDA, numpy's global, Python's), as tensors and
    plain data."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))


def plain(data: Any) -> Any:
    """``data`` with numpy scalars as Python numbers and numpy arrays as tensors (recursively through dicts,
    lists and tuples): what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(data, Mapping):
        return {key: plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(plain(item) for item in data)
    if isinstance(data, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, np.generic):
        return data.item()
    return data


def save_checkpoint(path: str | Path, kind: str, payload: Mapping[str, Any]) -> None:
    """Write a checkpoint of ``kind`` (``"train"``, ``"copying"``, ...) holding ``payload`` (tensors and
    plain data; numpy values are converted) atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "kind": kind, **plain(payload)}, buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path: str | Path, kind: str, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint of ``kind`` read without running any code from the file (``weights_only``); a missing,
    unreadable, foreign or older one is a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch writes zip archives; anything else is no checkpoint of ours
        state = "an empty file" if path.stat().st_size == 0 else "not a checkpoint file (torch's zip format)"
        raise ConfigError(f"cannot read checkpoint {path}: it is {state}")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"cannot read checkpoint {path}: it holds objects other than tensors and plain data "
            "(refused: loading them could run code)"
        ) from None
    except Exception as error:  # a corrupt file: refused
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(saved, dict) or saved.get("kind") != kind:
        raise ConfigError(f"{path} is not a rims-rl {kind} checkpoint")
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{path} is a checkpoint of format {saved.get('format')}, this version reads {CHECKPOINT_FORMAT}"
        )
    return saved


def policy_state(saved: Mapping[str, Any]) -> Any:
    """The policy's weights in a training checkpoint (``parameters.policy``), or None where it holds none."""
    parameters = saved.get("parameters")
    return parameters.get("policy") if isinstance(parameters, Mapping) else None


def load_weights(module: torch.nn.Module, state: Any, misfit: str) -> None:
    """``module.load_state_dict(state)``, where weights that do not fit (a config edited after training,
    another policy's file) are one :class:`ConfigError` line: ``misfit`` (what does not fit what), then the
    first difference torch names and how many more there are."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        problems = lines[1:] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines
        first = (problems[0] if problems else type(error).__name__).rstrip(".")
        first = first if len(first) <= 200 else first[:197] + "..."
        more = f"; and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise ConfigError(f"{misfit} ({first}{more})") from None


# ------------------------------------------------------------------------------------- resume contract


def check_resume(saved: Mapping[str, Any], now: Mapping[str, Any], mutable: Iterable[str]) -> None:
    """Refuse (one line naming the key) a resumed config that differs from the checkpoint's config anywhere
    but in ``mutable`` keys (dotted prefixes: ``"run.device"``, ``"total_steps"``, ...)."""
    difference = first_difference(saved, now, mutable)
    if difference is not None:
        key, before, after = difference
        raise ConfigError(
            f"--resume: {key} is {before!r} in this run and would become {after!r}; a resumed "
            "run keeps the experiment it started (start a new run for another)"
        )


def check_finite(tensors: Iterable[torch.Tensor], what: Callable[[], str]) -> None:
    """Raise :class:`RunDiverged` (with ``what()``'s words) if any tensor holds NaN or infinity."""
    if not all(torch.isfinite(t).all() for t in tensors):
        raise RunDiverged(what())
