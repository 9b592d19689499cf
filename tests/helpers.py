"""Shared test helpers."""

from __future__ import annotations

import subprocess
import sys


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m rims_rl ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "rims_rl", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2 and a single stderr line holding ``message``, no traceback."""
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def pairs(*items: str) -> list:
    """``"key=value"`` strings as the typed ``(key, value)`` overrides the runners take (``--set``'s reading)."""
    from rims_rl.agents.config import parse_set

    return [parse_set(item) for item in items]
