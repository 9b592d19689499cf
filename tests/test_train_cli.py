"""The training command line: runs, resume after a kill, evaluation, comparison, bad input, wandb."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from rims_rl.agents.config import to_dict
from rims_rl.agents.runs import RunDiverged
from rims_rl.agents.train import Checkpointer, build_model, resolve_config
from rims_rl.envs import make_env
from tests.helpers import TINY_PPO, as_flags, assert_one_line_error, cli, cli_here, offline_env, pairs

TINY = ["--config", "classic/cartpole.yaml", *as_flags(*TINY_PPO, "run.eval_episodes=2")]


def test_train_evaluate_compare_end_to_end(tmp_path):
    runs = tmp_path / "runs"
    for policy in ("rims", "lstm"):
        for seed in ("0", "1"):
            result = cli(
                "train", *TINY, "--policy", policy, "--seed", seed, "--total-steps", "256", "--out", str(runs),
                "--set", "run.eval_every=128", "--set", "run.checkpoint_every=128",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "trained 256 steps" in result.stdout
    run = runs / "CartPole-v1" / "ppo-rims" / "seed0"
    for name in ("config.yaml", "progress.csv", "evaluations.npz", "model.zip", "checkpoints/latest.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(np.load(run / "evaluations.npz")["timesteps"]) == 2

    result = cli_here("evaluate", str(run), "--episodes", "3", "--deterministic")
    assert result.returncode == 0, result.stderr
    assert "mean return" in result.stdout and "95% CI" in result.stdout

    result = cli_here("compare", str(runs), "--out", str(tmp_path / "cmp"))
    assert result.returncode == 0, result.stderr
    assert "ppo-lstm, ppo-rims" in result.stdout
    table = (tmp_path / "cmp" / "curves.csv").read_text().splitlines()
    assert table[0] == "env,run,seeds,step,mean_return,ci95_low,ci95_high"
    assert any(",ppo-rims,2," in row for row in table) and any(",ppo-lstm,2," in row for row in table)
    assert (tmp_path / "cmp" / "curves.png").stat().st_size > 1000


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    config = resolve_config("classic/cartpole.yaml", [("run.progress", False)])
    env = make_env(config.env.settings(), seed=0)
    model = build_model(config, env, torch.device("cpu"))
    model.set_logger(Logger(None, []))
    path = tmp_path / "latest.pt"
    callback = Checkpointer(path, 1, to_dict(config), "train")
    callback.init_callback(model)
    callback.on_training_start(locals(), globals())
    callback.on_rollout_start()
    callback.save()  # a good state: checkpointed
    good = path.read_bytes()
    with torch.no_grad():
        next(model.policy.parameters())[0] = float("nan")
    with pytest.raises(RunDiverged, match="NaN or infinite"):
        callback.on_rollout_start()
    assert path.read_bytes() == good
    env.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "Pongg"], "unknown Atari game 'Pongg'; did you mean Pong"),
        (["--env", "CartPole-v9"], "did you mean CartPole-v1"),
        (["--set", "ppo.n_stepz=3"], "unknown config key 'ppo.n_stepz'"),
        (["--set", "run.bogus=3"], "unknown config key 'run.bogus'"),
        (["--set", "ppo.n_steps=abc"], "ppo.n_steps must be an integer"),
        (["--set", "ppo.learning_rate=fast"], "lin_<positive number>"),
        (["--set", "rims.k_active=7"], "rims: k_active must be an integer in [1, num_units=6]"),
        (["--set", "env.sticky=0.25"], "unknown config key 'env.sticky'"),
        (["--set", "ppo.gamma=2.0"], "ppo.gamma must be in (0, 1]"),
        (["--set", "ppo.clip_range=-1"], "ppo.clip_range must be in (0, inf)"),
        (["--set", "ppo.batch_size=0"], "ppo.batch_size must be in [2, "),
        (["--set", "ppo.n_steps=0"], "ppo.n_steps must be in [1, "),
        (["--set", "ppo.n_epochs=0"], "ppo.n_epochs must be in [1, "),
        (["--set", "policy_kwargs.net_arch=abc"], "policy_kwargs.net_arch must be"),
        (["--set", "rims.num_units=1e9"], "rims.num_units must be in [1, 1024]"),
        (["--set", "env.n_envs=100000"], "env.n_envs must be in [1, 1024]"),
        (["--set", "ppo"], "is not of the form key=value"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--resume", "/nonexistent/run"], "--out does not apply with --resume"),
        (["--config", "nope.yaml"], "config not found"),
    ],
)
def test_bad_input_fails_fast_with_one_line(args, message, tmp_path):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    started = time.time()
    result = cli_here("train", "--out", str(tmp_path), *args)
    assert_one_line_error(result, message)
    assert not any(tmp_path.iterdir())  # nothing started
    assert time.time() - started < 60


def test_resume_from_a_corrupt_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(
        Path(__file__).parent.joinpath("..", "configs", "classic", "cartpole.yaml").read_text()
    )
    (run / "checkpoints" / "latest.pt").write_bytes(b"not a checkpoint")
    result = cli("train", "--resume", str(run))
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr


def test_wandb_tracking_works_offline_without_a_key(tmp_path):
    result = cli(
        "train", *TINY, "--total-steps", "64", "--out", str(tmp_path), "--track",
        "--set", "run.eval_every=0", env=offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = tmp_path / "CartPole-v1" / "ppo-rims" / "seed0"
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, "no offline wandb run was written"
    assert (run / "model.zip").is_file()


def test_training_survives_a_broken_wandb(tmp_path, monkeypatch):
    import wandb

    from rims_rl.agents.train import train

    def broken(*args, **kwargs):
        raise ConnectionError("wandb is unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    config = resolve_config(
        "classic/cartpole.yaml",
        pairs(
            "run.progress=false", "run.eval_every=0", "ppo.n_steps=16", "ppo.batch_size=32", f"run.out={tmp_path}",
            "total_steps=64", "run.track=true",
        ),
    )  # fmt: skip
    with pytest.warns(UserWarning, match="wandb tracking is off"):
        summary = train(config)
    assert summary["num_timesteps"] == 64


def test_cli_help_documents_every_option():
    for command, options in {
        "train": ["--config", "--env", "--algo", "--policy", "--seed", "--total-steps", "--device", "--set", "--track",
                  "--resume", "--out"],
        "evaluate": ["--episodes", "--deterministic", "--video"],
        "compare": ["--out", "--source"],
    }.items():  # fmt: skip
        result = cli_here(command, "--help")
        assert result.returncode == 0
        for option in options:
            assert option in result.stdout, f"{command} {option}"


def test_atari_run_evaluates_full_games_and_records_video(tmp_path):
    result = cli(
        "train", "--env", "ALE/Pong-v5", "--total-steps", "64", "--out", str(tmp_path),
        "--set", "env.n_envs=2", "--set", "ppo.n_steps=32", "--set", "ppo.batch_size=32", "--set", "ppo.n_epochs=1",
        "--set", "rims.unit_size=16", "--set", "env.max_episode_frames=400",
        "--set", "run.eval_every=0", "--set", "run.progress=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "run folder" in result.stdout and "Pong/ppo-rims/seed0" in result.stdout
    result = cli("evaluate", str(tmp_path / "Pong" / "ppo-rims" / "seed0"), "--episodes", "2", "--video")
    assert result.returncode == 0, result.stderr
    assert "mean length 100" in result.stdout  # 400 frames / frame skip 4: full (time-limited) games
    from PIL import Image

    gif = Image.open(tmp_path / "Pong" / "ppo-rims" / "seed0" / "videos" / "episode.gif")
    assert gif.n_frames > 50 and gif.size == (160, 210)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize(
    "command",
    [
        ["train", "--config", "classic/cartpole.yaml"],
        ["copying"],
        ["experiment-distractors"],
        ["imitation", "bc"],
        ["transfer", "--sources", "Pong", "--targets", "Alien"],
        ["ablate", "--games", "Pong"],
        ["sweep", "--config", "sweeps/cartpole_ablations.yaml"],
    ],
)
def test_every_runner_takes_device_cuda_and_refuses_it_without_a_gpu(command, tmp_path):
    result = cli_here(*command, "--device", "cuda", "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "no CUDA GPU is available")
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("ppo.gae_lambda", 1.0, True),
        ("ppo.gae_lambda", 2.0, False),
        ("ppo.gamma", 1.0, True),
        ("ppo.gamma", 1e-9, True),
        ("ppo.gamma", 0.0, False),  # the lower end is open
        ("rims.input_dropout", 0.99, True),
        ("rims.input_dropout", 1.0, False),  # the upper end is open
        ("env.sticky_actions", 0.999, True),
        ("env.sticky_actions", 1.0, False),
        ("ppo.max_grad_norm", 1e9, True),
        ("ppo.max_grad_norm", float("inf"), False),
        ("ppo.max_grad_norm", float("nan"), False),
    ],
)
def test_ranges_hold_at_their_ends(key, value, accepted):
    """Each end of a range is open or closed as the schema says, and inf and nan are never in a range."""
    from rims_rl.agents.config import ConfigError

    if accepted:
        resolve_config("atari/ppo_rims.yaml", [(key, value)])
    else:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.") + " must be in"):
            resolve_config("atari/ppo_rims.yaml", [(key, value)])


def test_without_a_terminal_progress_is_a_plain_line(tmp_path, monkeypatch, capsys):
    """Output that is not a terminal (a pipe, a log file) gets lines of progress instead of a bar."""
    import rims_rl.agents.train as train_module

    class Often(train_module.ProgressLines):
        def __init__(self, total: int) -> None:
            super().__init__(total, every=0.0)

    monkeypatch.setattr(train_module, "ProgressLines", Often)
    settings = ["ppo.n_steps=16", "ppo.batch_size=32", "ppo.n_epochs=1", "run.eval_every=0", "run.progress=true"]
    config = resolve_config("classic/cartpole.yaml", pairs(*settings, "total_steps=128", f"run.out={tmp_path}"))
    train_module.train(config)
    out = capsys.readouterr().out
    assert "step 64 of 128," in out and "steps/s" in out


def test_a_run_past_its_total_shows_where_it_stops_and_never_turns_its_rates_negative():
    """SB3 trains whole rollouts: 40 steps of 4 x 16-step rollouts train 64. The bar ends at 64 (not
    64/40), and the linear schedules stay at 0 past the total (not -0.6 x their start: a step uphill)."""
    from rims_rl.agents.train import StepsBar, planned_steps

    settings = pairs("env.n_envs=4", "ppo.learning_rate=lin_1e-3", "ppo.clip_range=lin_0.2", *TINY_PPO)
    config = resolve_config("classic/cartpole.yaml", settings)
    model = build_model(config, make_env(config.env.settings(), seed=0), torch.device("cpu"))
    bar = StepsBar(planned_steps(model, 40))
    model.learn(40, callback=bar)
    assert model.num_timesteps == bar.pbar.n == bar.pbar.total == 64
    assert model.policy.optimizer.param_groups[0]["lr"] == 0.0
    assert model.clip_range(model._current_progress_remaining) == 0.0
    bar = StepsBar(planned_steps(model, 100))  # a resumed session: from 64 to the rollout that passes 100
    model.learn(100 - model.num_timesteps, callback=bar, reset_num_timesteps=False)
    assert model.num_timesteps == bar.pbar.n == bar.pbar.total == 128
