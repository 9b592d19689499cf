"""rl-zoo3 trains, replays and tunes a RIMs policy named by its dotted path (the optional zoo extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rl_zoo3")
pytestmark = pytest.mark.zoo

HYPERPARAMETERS = Path(__file__).resolve().parent.parent / "configs" / "zoo" / "ppo_lstm.yml"
ZOO = ["--algo", "ppo_lstm", "--env", "CartPoleNoVel-v1"]


def zoo(module: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"rl_zoo3.{module}", *ZOO, *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_train_then_enjoy_a_rims_policy(tmp_path):
    zoo(
        "train",
        "-conf",
        str(HYPERPARAMETERS),
        "-n",
        "2048",
        "-f",
        "logs",
        "--seed",
        "0",
        "--eval-freq",
        "-1",
        cwd=tmp_path,
    )
    (model,) = (tmp_path / "logs" / "ppo_lstm").glob("CartPoleNoVel-v1_*/CartPoleNoVel-v1.zip")
    from sb3_contrib import RecurrentPPO

    from rims_rl.policies import RimsPolicy
    from rims_rl.rims import RIMs

    policy = RecurrentPPO.load(model, device="cpu").policy
    assert type(policy) is RimsPolicy and isinstance(policy.lstm_actor, RIMs)
    assert "Mean reward" in zoo("enjoy", "-f", "logs", "-n", "200", "--no-render", cwd=tmp_path)


def test_optimize_runs_trials_with_the_core_at_its_defaults(tmp_path):
    out = zoo(
        "train",
        "-conf",
        str(HYPERPARAMETERS),
        "-n",
        "1024",
        "-f",
        "logs",
        "--seed",
        "0",
        "--optimize",
        "--n-trials",
        "2",
        "--n-jobs",
        "1",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--n-evaluations",
        "1",
        "--eval-episodes",
        "1",
        cwd=tmp_path,
    )
    assert "Number of finished trials:  2" in out
