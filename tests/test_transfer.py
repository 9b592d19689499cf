"""Fine-tuning from saved weights (run.init_from) and the Atari transfer runner."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rims_rl.agents.config import ConfigError
from rims_rl.agents.runs import run_dir_for
from rims_rl.agents.train import build_model, init_weights, resolve_config, train
from rims_rl.agents.transfer import load_transfer_config, plan_transfer, run_transfer, transfer_score
from rims_rl.envs import make_env
from tests.helpers import assert_one_line_error, cli_here, pairs

# A few hundred steps of tiny PPO on Atari: enough for a learning curve of a few points.
ATARI_TINY = [
    "env.n_envs=2", "env.max_episode_frames=400", "ppo.n_steps=32", "ppo.batch_size=32", "ppo.n_epochs=1",
    "rims.unit_size=16", "lstm.lstm_hidden_size=96", "run.progress=false", "run.eval_every=0",
]  # fmt: skip


def quiet(_message: str) -> None:
    pass


TRAINING = pairs(*ATARI_TINY, "run.device=cpu")


def tiny_transfer(**choices):
    settings = {"sources": ["Pong", "Breakout"], "targets": ["Boxing"], "seeds": [0], "policies": ["rims"]}
    settings |= {"source_steps": 128, "target_steps": 256, **choices}
    return load_transfer_config("atari/transfer.yaml", list(settings.items()))


def test_init_from_starts_with_the_saved_weights_and_fresh_counters(tmp_path):
    base = ["ppo.n_steps=16", "ppo.batch_size=32", "ppo.n_epochs=1", "run.progress=false", "run.eval_every=0"]
    source = resolve_config("classic/cartpole.yaml", pairs(*base, f"run.out={tmp_path}", "total_steps=64"))
    train(source)
    saved = run_dir_for(source)
    config = resolve_config("classic/cartpole.yaml", pairs(*base, f"run.init_from={saved}", "total_steps=64"))
    env = make_env(config.env.settings(), seed=1)
    model = build_model(config, env, torch.device("cpu"))
    fresh = {k: v.clone() for k, v in model.policy.state_dict().items()}
    init_weights(model, saved)
    trained = build_model(source, env, torch.device("cpu")).load(saved / "model.zip").policy.state_dict()
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)  # the weights did move
    assert model.num_timesteps == 0
    env.close()

    # A policy of another shape (LSTM core, or another action count) is refused in one line.
    lstm = resolve_config(
        "classic/cartpole.yaml", pairs(*base, f"run.init_from={saved}", "policy=lstm", "total_steps=64")
    )
    env = make_env(lstm.env.settings(), seed=1)
    with pytest.raises(ConfigError, match="does not fit this policy") as refused:
        init_weights(build_model(lstm, env, torch.device("cpu")), saved)
    assert "\n" not in str(refused.value) and "more)" in str(refused.value)  # the first difference, then a count
    env.close()

    # SB3's model.zip of the same run gives the same weights (its policy.pth, read as tensors only).
    model = build_model(config, make_env(config.env.settings(), seed=1), torch.device("cpu"))
    init_weights(model, saved / "model.zip")
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nowhere", "run.init_from: no trained model at"),
        (lambda d: write_zip(d / "model.zip", {"data": b"{}"}), "is not a model.zip with policy weights"),
        (lambda d: write(d / "model.zip", b"PK\x03\x04 cut short"), "is not a model.zip"),
        (lambda d: write(d / "latest.pt", b"108"), "it is not a checkpoint file"),
        (lambda d: write(d / "latest.pt", b""), "it is an empty file"),
    ],
    ids=["missing", "zip-without-policy", "broken-zip", "not-torch", "empty"],
)
def test_init_from_a_bad_model_is_one_line_before_any_work(tmp_path, make, message):
    target = make(tmp_path)
    result = cli_here(
        "train", "--config", "classic/cartpole.yaml", "--out", str(tmp_path / "runs"),
        "--set", f"run.init_from={target}",
    )  # fmt: skip
    assert_one_line_error(result, message)
    assert not (tmp_path / "runs").exists()


def test_transfer_plan_chains_sources_and_pairs_targets(tmp_path):
    plan = plan_transfer(tiny_transfer(policies=["rims", "lstm"], seeds=[0, 1]), tmp_path, TRAINING)
    assert len(plan) == 2 * 2 * (2 + 2 * 1)
    rims0 = [e for e in plan if (e["policy"], e["seed"]) == ("rims", 0)]
    assert [(e["stage"], e["game"]) for e in rims0] == [
        ("pretrain", "Pong"),
        ("pretrain", "Breakout"),
        ("transfer", "Boxing"),
        ("scratch", "Boxing"),
    ]
    pong, breakout, transfer, scratch = (e["config"] for e in rims0)
    assert pong.run.init_from is None and scratch.run.init_from is None
    assert breakout.run.init_from == str(run_dir_for(pong))
    assert transfer.run.init_from == str(run_dir_for(breakout))
    assert all(e["config"].env.options["full_action_space"] for e in plan)  # one action set for all games
    assert run_dir_for(transfer) != run_dir_for(scratch)
    assert transfer.total_steps == scratch.total_steps == 256 and pong.total_steps == 128
    assert len({run_dir_for(e["config"]) for e in plan}) == len(plan)


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({"targets": ["Pong"]}, "games both source and target: Pong"),
        ({"targets": ["Boxng"]}, "did you mean Boxing"),
        ({"targets": ["CartPole-v1"]}, "transfer runs on Atari games"),
        ({"targets": []}, "targets must be a non-empty list"),
        ({"sources": ["Pong", "PongNoFrameskip-v4"]}, "sources names a game twice"),
    ],
)
def test_bad_transfer_settings_fail_before_anything_runs(choices, message):
    with pytest.raises(ConfigError, match=message):
        tiny_transfer(**choices)


def test_transfer_score_sign_and_scale():
    assert transfer_score(12.0, 10.0) == pytest.approx(0.2)
    assert transfer_score(-15.0, -20.0) == pytest.approx(0.25)  # less negative is better
    assert transfer_score(-1.0, 2.0) == pytest.approx(-1.5)
    assert transfer_score(1.0, 0.0) == np.inf and transfer_score(0.0, 0.0) == 0.0


def test_transfer_runs_every_stage_writes_the_table_and_reuses_runs(tmp_path):
    messages = []
    result = run_transfer(tiny_transfer(), tmp_path, TRAINING, log=messages.append)
    assert [m.split(":")[1].split()[0] for m in messages] == ["trained"] * 4
    runs = tmp_path / "runs"
    for folder in ("Pong/ppo-rims-pretrain", "Breakout/ppo-rims-pretrain", "Boxing/ppo-rims-transfer"):
        assert (runs / folder / "seed0" / "model.zip").is_file()
    (row,) = result["rows"]
    assert row["game"] == "Boxing" and row["seeds"] == 1
    assert np.isfinite(row["transfer_area"]) and np.isfinite(row["scratch_area"])
    assert row["positive"] == (row["transfer_area"] > row["scratch_area"])
    table = (tmp_path / "results.md").read_text()
    assert "| rims | Boxing |" in table and "positive transfer in" in table
    assert result["positive"]["rims"] == int(row["positive"])

    saved = yaml.safe_load((runs / "Boxing/ppo-rims-transfer/seed0/config.yaml").read_text())
    assert saved["run"]["init_from"] == str(runs / "Breakout/ppo-rims-pretrain/seed0")

    messages.clear()
    again = run_transfer(tiny_transfer(), tmp_path, TRAINING, log=messages.append)
    assert all(": done (" in m for m in messages) and again["rows"] == result["rows"]


def test_transfer_cli_bad_input_is_one_line(tmp_path):
    result = cli_here("transfer", "--sources", "Pong", "--targets", "Pong", "--out", str(tmp_path))
    assert_one_line_error(result, "games both source and target")
    result = cli_here("transfer", "--sources", "Pong", "--targets", "Alien", "--set", "rims.k_active=9")
    assert_one_line_error(result, "k_active")
