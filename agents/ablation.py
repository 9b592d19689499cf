"""The input-attention ablation (paper Sec. 4.4, Fig. 25), top to bottom.

An ablation is a sweep plus a report:

1. Start from ``configs/sweeps/atari_ablation.yaml``: RIMs, RIMs without input attention (every unit
   reads the input, is active and communicates at every step) and the LSTM, on the same PPO settings.
   The command line may replace its games and seeds and add two more variants: ``rims-all-active``
   (``k_active`` = ``num_units``: no sparsity) and ``rims-no-communication``.
2. Write that grid to ``<out>/ablation.yaml`` (what was run, readable and rerunnable with
   ``rims-rl sweep``) and run it with the sweep machinery: local process pool or Ray, finished runs
   skipped, unfinished ones resumed, a failed run reported without stopping the others.
3. Write one report over all the runs to ``<out>/report/`` (curves per game, improvement over the LSTM,
   rliable aggregates on Atari).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from rims_rl.agents.config import ConfigError, SweepConfig, load, to_dict
from rims_rl.agents.report import write_report
from rims_rl.agents.runs import check_writable
from rims_rl.agents.sweep import check_backend, load_sweep, run_sweep
from rims_rl.agents.train import resolve_config

__all__ = ["ablation_sweep", "run_ablation"]


def ablation_sweep(
    path: str | Path = "sweeps/atari_ablation.yaml",
    *,
    games: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    all_active: bool = False,
    no_communication: bool = False,
) -> dict[str, Any]:
    """The ablation's sweep file contents with the command line's choices applied (checked as a sweep)."""
    spec = to_dict(load(SweepConfig, path))
    if not spec["variants"]:
        raise ConfigError(f"{path}: an ablation file is a sweep file with variants")
    if games is not None:
        spec["grid"]["env.id"] = list(games)
    if seeds is not None:
        spec["grid"]["run.seed"] = list(seeds)
    if all_active:
        units = resolve_config(spec["config"]).rims.num_units
        spec["variants"]["rims-all-active"] = {"rims.k_active": units}
    if no_communication:
        spec["variants"]["rims-no-communication"] = {"rims.communication": False}
    return spec


def run_ablation(
    path: str | Path = "sweeps/atari_ablation.yaml",
    *,
    out: str | Path | None = None,
    games: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    all_active: bool = False,
    no_communication: bool = False,
    overrides: Sequence[tuple[str, Any]] = (),
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
    source: str = "eval",
    track: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the ablation grid and write its report; returns the sweep's result and the report's files.

    ``overrides``: ``(key, value)`` pairs for every run's training config (``--set``, ``--device``)."""
    check_backend(backend, address)
    spec = ablation_sweep(path, games=games, seeds=seeds, all_active=all_active, no_communication=no_communication)
    if out is not None:
        spec["out"] = str(out)
    sweep = load_sweep(spec, overrides, workers=workers, name=str(path))  # every run's config is checked here
    if source == "eval":  # the report scores periodic evaluations: each run must make at least one
        for run in sweep.runs:
            settings, total = run.config["run"], run.config["total_steps"]
            if not settings["eval_every"] or not settings["eval_episodes"] or total < settings["eval_every"]:
                raise ConfigError(
                    f"{run.name}: {total} steps with run.eval_every={settings['eval_every']} and run.eval_episodes="
                    f"{settings['eval_episodes']} make no evaluation for the report to score; give more steps, a "
                    "smaller run.eval_every, or --source train"
                )
    out = Path(spec["out"])
    check_writable(out)
    effective = out / "ablation.yaml"
    effective.write_text(
        "# Written by rims-rl ablate: the grid it ran; rims-rl sweep --config <this file> reruns it.\n"
        + yaml.safe_dump({key: value for key, value in spec.items() if value is not None}, sort_keys=False)
    )
    result = run_sweep(sweep, backend=backend, address=address, log=log)
    report = write_report([out], out / "report", source=source, track=track)
    return {"sweep": result, "report": report, "file": str(effective)}
