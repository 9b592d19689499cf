"""Shared test helpers."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

# The smallest PPO that still runs every part of training (rollouts of 16 steps, one epoch of two
# minibatches, no progress bar): the settings the command-line and runner tests share, as ``--set`` items.
TINY_PPO = ("ppo.n_steps=16", "ppo.batch_size=32", "ppo.n_epochs=1", "run.progress=false")


def as_flags(*items: str) -> list[str]:
    """``key=value`` items as the command line's ``--set`` flags."""
    return [arg for item in items for arg in ("--set", item)]


def offline_env(home: Path) -> dict[str, str]:
    """The environment of a process with no wandb key anywhere (HOME moved to ``home``, no ``WANDB_*``: wandb
    runs offline), still sharing this machine's build of the compiled loop (else each such process would
    compile it again in its new HOME, about 25 s)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env["HOME"] = str(home)
    env["RIMS_RL_BUILD_DIR"] = os.environ.get("RIMS_RL_BUILD_DIR") or str(Path.home() / ".cache" / "rims_rl")
    return env


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m rims_rl ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "rims_rl", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """Run the ``rims-rl`` command line inside this process, as :func:`cli` reports it (exit code, stdout,
    stderr), without starting an interpreter (about 2 s each). For commands that refuse before any work, and
    short ones that read a run (evaluate, visualize). What a fresh process adds (registration on import,
    warnings printed to stderr, signals, training's threads and handlers) stays with the tests that use
    :func:`cli`."""
    from rims_rl.agents.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse: --help (0), a bad flag (2)
            code = stop.code if isinstance(stop.code, int) else 1
    return subprocess.CompletedProcess(["rims-rl", *args], code, stdout.getvalue(), stderr.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2 and a single stderr line holding ``message``, no traceback."""
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def pairs(*items: str) -> list:
    """``"key=value"`` strings as the typed ``(key, value)`` overrides the runners take (``--set``'s reading)."""
    from rims_rl.agents.config import parse_set

    return [parse_set(item) for item in items]
