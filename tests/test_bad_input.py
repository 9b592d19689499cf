"""Bad input of every class gets one line naming the file or key, before any work (issue 29)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from rims_rl.agents.config import ConfigError, parse_set
from rims_rl.agents.train import resolve_config
from tests.helpers import assert_one_line_error, cli, cli_here

CARTPOLE = (Path(__file__).parent.parent / "configs" / "classic" / "cartpole.yaml").read_text()
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (CARTPOLE + "algo: a2c\n", "key 'algo' appears twice (line"),
        (CARTPOLE.replace("  n_steps: 64", "  n_steps: 64\n  n_steps: 32", 1), "key 'n_steps' appears twice"),
        (BOMB, "aliases (*name) are not allowed"),
        ("a: &a [*a]\n", "aliases (*name) are not allowed"),
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply to be a config"),
        ("a: " + "x" * 1_100_000 + "\n", "a config is at most 1,000,000"),
        (b"\xff\xfe\x00binary\x00", "not UTF-8 text"),
    ],
    ids=["duplicate-top-key", "duplicate-nested-key", "alias-bomb", "recursive-alias", "deep", "huge", "binary"],
)
def test_config_files_that_cannot_be_configs_are_one_line_and_never_hang(content, message, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    started = time.time()
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.")) as error:
        resolve_config(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert time.time() - started < 5


def test_an_alias_bomb_is_refused_by_the_command_line_before_any_work(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    result = cli("train", "--config", str(path), "--out", str(tmp_path / "runs"), timeout=60)
    assert_one_line_error(result, "aliases (*name) are not allowed in a config")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key", ["ppo.target_kl", "rims.input_dropout"])
def test_exponent_floats_are_numbers_in_files_and_in_set(key, tmp_path):
    """YAML 1.1 reads 1e-2 as a string; a config reads it as the number it is, as it reads 0.01."""
    assert parse_set(f"{key}=1e-2") == (key, 0.01)
    config = resolve_config("atari/ppo_rims.yaml", [parse_set(f"{key}=1e-2")])
    section, name = key.split(".")
    assert getattr(getattr(config, section), name) == 0.01
    path = tmp_path / "config.yaml"
    path.write_text(CARTPOLE.replace("  gamma: 0.99", "  gamma: 99e-2", 1))
    assert resolve_config(path).ppo.gamma == 0.99


def test_a_damaged_run_config_is_one_line_for_every_reader(tmp_path):
    from rims_rl.agents.evaluate import load_run
    from rims_rl.agents.runs import read_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(CARTPOLE + "policy: lstm\n")
    for read in (read_config, load_run):
        with pytest.raises(ConfigError, match="key 'policy' appears twice"):
            read(run)
    (run / "config.yaml").write_bytes(b"\x80\x81 not text")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        read_config(run)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("run.label", "..", "run.label must be a name of letters, digits and _.+- only, not dots only"),
        ("run.label", ".", "not dots only"),
        ("run.label", "../elsewhere", "run.label must be a name of letters"),
        ("ppo.learning_rate", "lin_0", "ppo.learning_rate must be a positive number or lin_<positive number>"),
        ("ppo.clip_range", "lin_0.0", "ppo.clip_range must be a positive number"),
        ("ppo.learning_rate", "lin_0e3", "a positive number or lin_"),
        ("ppo.learning_rate", "lin_1e999", "a positive number or lin_"),  # infinite
        ("ppo.clip_range", "lin_1e-400", "a positive number or lin_"),  # zero once read
        ("ppo.learning_rate", "lin_nan", "a positive number or lin_"),
    ],
)
def test_values_the_schema_promises_to_refuse(key, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("+", r"\+")):
        resolve_config("atari/ppo_rims.yaml", [(key, value)])
    # Their neighbours that are fine stay fine.
    resolve_config("atari/ppo_rims.yaml", [("run.label", "a..b"), ("ppo.learning_rate", "lin_0.1")])


@pytest.mark.parametrize("command", ["compare", "report", "visualize", "sweep", "experiment-distractors"])
@pytest.mark.parametrize(("out", "message"), [("file", "is a file, not a folder"), ("file/sub", "a part of this path")])
def test_an_output_folder_that_cannot_be_one_is_one_line_before_any_work(command, out, message, tmp_path, monkeypatch):
    from rims_rl.agents import compare, distractors, evaluate, report, sweep, visualize

    (tmp_path / "file").write_text("a file")
    run = tmp_path / "runs" / "CartPole-v1" / "ppo-rims" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(CARTPOLE)
    (run / "progress.csv").write_text("time/total_timesteps,rollout/ep_rew_mean\n64,1.0\n")
    np.savez(run / "evaluations.npz", timesteps=np.array([64]), results=np.ones((1, 2)), ep_lengths=np.ones((1, 2)))
    monkeypatch.setattr(evaluate, "make_env", lambda *a, **k: pytest.fail("an environment was started"))
    monkeypatch.setattr(sweep, "_run_local", lambda *a, **k: pytest.fail("a run was started"))
    target = tmp_path / out
    calls = {
        "compare": lambda: compare.compare_runs([tmp_path / "runs"], target),
        "report": lambda: report.write_report([tmp_path / "runs"], target),
        "visualize": lambda: visualize.visualize_run(run, out=target),
        "sweep": lambda: sweep.run_sweep(sweep.load_sweep("sweeps/demo.yaml", out=target)),
        "experiment-distractors": lambda: distractors.run_distractors(out=target, seeds=[0]),
    }
    with pytest.raises(ConfigError, match=message):
        calls[command]()


@pytest.mark.parametrize("command", ["compare", "report"])
def test_a_refused_compare_or_report_leaves_no_output_folder(command, tmp_path):
    (tmp_path / "runs").mkdir()
    result = cli_here(command, str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "no run folders")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("evaluations.npz", b"garbage, not a zip", "not a readable evaluations file"),
        ("evaluations.npz", "arrays", "its arrays are not evaluations"),
        (
            "progress.csv",
            b"time/total_timesteps,rollout/ep_rew_mean\n\xff\xfe\x00\x81\n",
            "not a readable training log",
        ),
        ("progress.csv", "time/total_timesteps,rollout/ep_rew_mean\n64,ten\n", "line 2: a step or return that is not"),
    ],
)
def test_a_damaged_run_record_is_one_line_for_every_reader(name, content, message, tmp_path):
    """compare, report and --resume read the same files through one reader each."""
    import numpy as np

    from rims_rl.agents.compare import compare_runs
    from rims_rl.agents.runs import learning_curve

    run = tmp_path / "runs" / "CartPole-v1" / "ppo-rims" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(CARTPOLE)
    if content == "arrays":
        np.savez(run / name, timesteps=np.arange(3), results=np.zeros(3), ep_lengths=np.zeros(3))
    else:
        (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    source = "eval" if name == "evaluations.npz" else "train"
    with pytest.raises(ConfigError, match=message):
        learning_curve(run, source)
    with pytest.raises(ConfigError, match=message):
        compare_runs([tmp_path / "runs"], tmp_path / "out", source=source)


@pytest.mark.parametrize(
    ("config", "overrides", "what"),
    [
        ("atari/ppo_rims.yaml", [("rims.unit_size", 8192)], "rims.unit_size"),
        ("atari/ppo_rims.yaml", [("policy", "lstm"), ("lstm.lstm_hidden_size", 65536)], "lstm.lstm_hidden_size"),
        ("minigrid/pickup.yaml", [("policy_kwargs.net_arch", [65536, 65536])], "net_arch"),
        ("minigrid/pickup.yaml", [("rims.comm_key_size", 65536), ("rims.num_units", 256)], "rims.unit_size"),
    ],
)
def test_sizes_memory_cannot_hold_are_one_line_with_the_estimate(config, overrides, what, monkeypatch):
    """The config check counts the policy's parameters (the cores on the meta device) before anything is built."""
    from rims_rl.agents import config as config_module

    monkeypatch.setattr(config_module, "physical_memory", lambda: 24 * 2**30)  # the project's machines
    with pytest.raises(ConfigError, match=r"parameters: [0-9.]+ GiB to train .* more than this machine's 24\.0 GiB"):
        resolve_config(config, overrides)
    with pytest.raises(ConfigError, match=what):
        resolve_config(config, overrides)
    resolve_config(config)  # the packaged sizes fit


def test_an_oversized_core_is_refused_by_the_command_line_before_any_work(tmp_path):
    result = cli_here("train", "--set", "rims.unit_size=8192", "--out", str(tmp_path / "runs"))
    assert_one_line_error(result, "GiB to train with gradients and Adam")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("expert.sac.gamma=5", "expert.sac.gamma must be in (0, 1], got 5.0"),
        ("expert.sac.bogus=1", "unknown config key 'expert.sac.bogus'"),
        ("expert.ppo.lerning_rate=1", "did you mean learning_rate?"),
        ("expert.sac.learning_rate=-1", "expert.sac.learning_rate must be in (0, inf)"),
        ("expert.sac.buffer_size=900000000", "transitions take about 140.8 GiB"),
        ("evaluate.seeds=[]", "evaluate.seeds must name at least one seed"),  # else the whole pipeline, then nan
    ],
)
def test_the_imitation_settings_are_checked_when_the_config_loads(setting, message, monkeypatch):
    """Checked by the schema when the config loads, before MuJoCo starts (SB3 took them unchecked)."""
    from rims_rl.agents import config as config_module
    from rims_rl.agents.imitation import load_imitation_config

    monkeypatch.setattr(config_module, "physical_memory", lambda: 24 * 2**30)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_imitation_config(overrides=[parse_set(setting)])


def test_variants_of_a_sweep_without_variants_is_one_line(tmp_path):
    from rims_rl.agents.distractors import run_distractors

    path = tmp_path / "sweep.yaml"
    path.write_text("command: train\nconfig: minigrid/pickup.yaml\nout: out\ngrid: {run.seed: [0]}\n")
    with pytest.raises(ConfigError, match=r"--variants: rims not in .* it has no variants"):
        run_distractors(path, variants=["rims"])


def test_the_memory_estimate_counts_an_lstm_reading_a_set_flattened():
    vector = resolve_config("minigrid/pickup.yaml", [("policy", "lstm")]).parameter_estimate()
    rows = resolve_config("minigrid/pickup.yaml", [("policy", "lstm"), ("policy_kwargs.features", "set")])
    assert rows.parameter_estimate() == vector + 2 * 4 * 192 * (50 * 32 - 128)  # two cores' wider input weights


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("algo: ppo\n", ""), "algo is missing or not a name"),
        (lambda text: text.replace("run:\n", "run: []\nrest:\n", 1), "env.id or run is missing or of the wrong kind"),
        (lambda text: text.replace("policy: rims\n", "policy: [rims]\n"), "policy is missing or not a name"),
    ],
    ids=["no-algo", "run-a-list", "policy-a-list"],
)
def test_a_run_config_that_is_not_a_training_record_is_one_line(edit, message, tmp_path):
    from rims_rl.agents.compare import compare_runs

    run = tmp_path / "runs" / "CartPole-v1" / "ppo-rims" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(edit(CARTPOLE))
    (run / "progress.csv").write_text("time/total_timesteps,rollout/ep_rew_mean\n64,1.0\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        compare_runs([tmp_path / "runs"], tmp_path / "out")


@pytest.mark.parametrize("damage", ["lock-a-folder", "checkpoints-a-file", "progress-a-folder"])
def test_entries_of_the_wrong_kind_in_a_run_folder_are_one_line_before_any_work(damage, tmp_path, monkeypatch):
    from rims_rl.agents import train as train_module
    from tests.helpers import pairs

    settings = ["ppo.n_steps=16", "ppo.batch_size=32", "ppo.n_epochs=1", "run.eval_every=0", "run.progress=false"]
    config = resolve_config("classic/cartpole.yaml", pairs(*settings, "total_steps=64", f"run.out={tmp_path}"))
    train_module.train(config)
    run = tmp_path / "CartPole-v1" / "ppo-rims" / "seed0"
    if damage == "lock-a-folder":
        (run / ".lock").unlink()
        (run / ".lock").mkdir()
    elif damage == "checkpoints-a-file":
        (run / "checkpoints" / "latest.pt").unlink()
        (run / "checkpoints").rmdir()
        (run / "checkpoints").write_text("not a folder")
    else:
        (run / "progress.csv").unlink()
        (run / "progress.csv").mkdir()
    monkeypatch.setattr(train_module, "make_env", lambda *a, **k: pytest.fail("an environment was started"))
    with pytest.raises(ConfigError, match="move it away"):
        train_module.resume(run, [("total_steps", 128)])


def test_weights_that_no_longer_fit_an_edited_config_are_one_line(tmp_path):
    """A run's config.yaml edited after training (a core size): evaluate names the checkpoint, the first
    mismatch and how many more, in one line (torch's own message runs to about 19 lines)."""
    import torch

    from rims_rl.agents.algorithms import algorithm_state
    from rims_rl.agents.checkpointing import save_checkpoint
    from rims_rl.agents.config import to_dict
    from rims_rl.agents.train import build_model
    from rims_rl.envs import make_env

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = resolve_config("classic/cartpole.yaml", [("env.n_envs", 1)])
    model = build_model(config, make_env(config.env.settings(), seed=0), torch.device("cpu"))
    save_checkpoint(run / "checkpoints" / "latest.pt", "train", {**algorithm_state(model), "config": to_dict(config)})
    (run / "config.yaml").write_text(CARTPOLE.replace("  unit_size: 16", "  unit_size: 24", 1))
    result = cli_here("evaluate", str(run), "--episodes", "1")
    assert_one_line_error(result, "latest.pt does not fit the run's config.yaml (edited since?) (size mismatch for")
    assert "more)" in result.stderr
