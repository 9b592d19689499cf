"""Run records you can trust: exact resume after any stop, one writer per folder, a resume contract, no code
run when a run folder is opened, wandb records that overlay, and bad input in one line."""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rims_rl.agents.algorithms import algorithm_state, restore_algorithm
from rims_rl.agents.checkpointing import load_checkpoint, save_checkpoint
from rims_rl.agents.runs import RunError
from rims_rl.agents.train import build_model, resolve_config
from rims_rl.envs import make_env
from tests.helpers import TINY_PPO, as_flags, assert_one_line_error, cli, cli_here, offline_env, pairs

SETTINGS = [*TINY_PPO, "run.checkpoint_every=128", "run.eval_every=192", "run.eval_episodes=2"]
TINY = ["--config", "classic/cartpole.yaml", *as_flags(*SETTINGS)]


def run_folder(out: Path, policy: str = "rims", seed: int = 0) -> Path:
    return out / "CartPole-v1" / f"ppo-{policy}" / f"seed{seed}"


def start(out: Path, *extra: str, total: int = 1_000_000, env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "rims_rl", "train", *TINY, "--total-steps", str(total), "--out", str(out), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path: Path, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def checkpoint_steps(run: Path) -> int:
    return load_checkpoint(run / "checkpoints" / "latest.pt", "train")["num_timesteps"]


def kill_with_rows_past_checkpoint(process: subprocess.Popen, run: Path, seconds: float = 180) -> None:
    """kill -9 a training process at a moment its log holds rows past its latest checkpoint. The process is
    frozen (SIGSTOP) before the files are read, so it cannot write a checkpoint between the look and the kill."""
    deadline = time.time() + seconds
    latest = run / "checkpoints" / "latest.pt"
    while True:
        assert time.time() < deadline, "no rows past a checkpoint"
        process.send_signal(signal.SIGSTOP)
        if latest.exists() and (run / "progress.csv").exists() and max(logged_steps(run)) > checkpoint_steps(run):
            break
        process.send_signal(signal.SIGCONT)
        time.sleep(0.2)
    process.kill()
    process.wait()


def logged_steps(run: Path) -> list[int]:
    with open(run / "progress.csv") as handle:
        return [int(row["time/total_timesteps"]) for row in csv.DictReader(handle)]


def tensorboard_steps(run: Path, tag: str = "time/fps") -> list[int]:
    """The steps of ``tag`` as TensorBoard shows them: every events file of the run, the purges of a
    resumed session's writer applied."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return [event.step for event in events.Tensors(tag)]  # scalars written in TensorBoard's new style


def assert_exact_record(run: Path, total: int) -> None:
    """Each step once and in order in every record, nothing left over from an interrupted write."""
    steps = logged_steps(run)
    assert steps == sorted(set(steps)), steps
    assert steps[-1] >= total
    shown = tensorboard_steps(run)
    assert shown == sorted(set(shown)) and shown[-1] >= total, shown
    evaluations = np.load(run / "evaluations.npz")["timesteps"].tolist()
    assert evaluations == sorted(set(evaluations)), evaluations
    assert not list(run.rglob("*.tmp"))
    assert checkpoint_steps(run) >= total


# ------------------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("when", ["before-first-checkpoint", "after-checkpoints"])
def test_kill_9_then_resume_continues_with_each_step_logged_once(tmp_path, when):
    first_checkpoint = ["--set", "run.checkpoint_every=100000"] if when == "before-first-checkpoint" else []
    process = start(tmp_path, *first_checkpoint)
    run = run_folder(tmp_path)
    wait_for(run / "progress.csv")  # the log is live: a row per rollout, checkpoint or not
    if when == "after-checkpoints":
        wait_for(run / "checkpoints" / "latest.pt")
        first = checkpoint_steps(run)
        deadline = time.time() + 120
        while checkpoint_steps(run) == first and time.time() < deadline:  # a second one, and rows after it
            time.sleep(0.2)
        time.sleep(0.5)
    process.kill()
    process.wait()
    stopped = checkpoint_steps(run) if (run / "checkpoints" / "latest.pt").exists() else 0
    assert logged_steps(run)  # the log is live: rows reached the disk before any checkpoint did
    # An atomic write the kill interrupted leaves a temporary file beside its target.
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / ".latest.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    total = stopped + 256
    resumed = cli("train", "--resume", str(run), "--total-steps", str(total))
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained {total}" in resumed.stdout or "trained" in resumed.stdout
    assert_exact_record(run, total)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_checkpoints_the_last_rollout_start_and_resume_continues(tmp_path, stop):
    process = start(tmp_path)
    run = run_folder(tmp_path)
    wait_for(run / "checkpoints" / "latest.pt")
    time.sleep(1.0)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + stop, stderr
    assert "rims-rl train --resume" in stderr and "Traceback" not in stderr
    stopped = checkpoint_steps(run)
    assert stopped > 0 and stopped % (16 * 4) == 0  # a rollout boundary: n_steps x n_envs
    assert logged_steps(run)[-1] >= stopped  # the log is live: it may hold the rollout after the checkpoint
    refused = cli_here("train", *TINY, "--total-steps", "1000000", "--out", str(tmp_path))
    assert refused.returncode == 2 and "--resume" in refused.stderr  # a new run into a held folder
    resumed = cli("train", "--resume", str(run), "--total-steps", str(stopped + 128))
    assert resumed.returncode == 0, resumed.stderr
    assert_exact_record(run, stopped + 128)
    assert (run / "model.zip").is_file()


def test_checkpoint_round_trip_restores_parameters_optimizer_random_streams_and_step_count(tmp_path):
    config = resolve_config("classic/cartpole.yaml", pairs(*SETTINGS, f"run.out={tmp_path}"))
    env = make_env(config.env.settings(), seed=0)
    model = build_model(config, env, torch.device("cpu"))
    model.learn(192)
    save_checkpoint(tmp_path / "latest.pt", "train", algorithm_state(model))
    after_save = (torch.rand(3), np.random.rand(3), random.random())  # drawn from the saved streams
    fresh = build_model(config, make_env(config.env.settings(), seed=0), torch.device("cpu"))
    restore_algorithm(fresh, load_checkpoint(tmp_path / "latest.pt", "train"))
    after_restore = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after_restore[0], after_save[0]) and np.array_equal(after_restore[1], after_save[1])
    assert after_restore[2] == after_save[2]
    assert fresh.num_timesteps == model.num_timesteps == 192 and fresh._n_updates == model._n_updates
    for (name, a), b in zip(model.policy.state_dict().items(), fresh.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    saved_state, restored_state = model.policy.optimizer.state_dict(), fresh.policy.optimizer.state_dict()
    for key, value in saved_state["state"].items():
        for field, tensor in value.items():
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(restored_state["state"][key][field]))
    assert [e["r"] for e in fresh.ep_info_buffer] == [e["r"] for e in model.ep_info_buffer]


def test_random_streams_are_those_of_the_checkpoint(tmp_path):
    """Every stream restored: a resume that skipped one would draw other numbers."""
    config = resolve_config("classic/cartpole.yaml", pairs(*SETTINGS))
    model = build_model(config, make_env(config.env.settings(), seed=0), torch.device("cpu"))
    save_checkpoint(tmp_path / "latest.pt", "train", algorithm_state(model))
    expected = (torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_algorithm(model, load_checkpoint(tmp_path / "latest.pt", "train"))
    assert (torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]) == expected


# ------------------------------------------------------------------------------------- one writer


def test_a_second_process_on_a_held_folder_stops_at_once_naming_the_holder(tmp_path):
    process = start(tmp_path)
    run = run_folder(tmp_path)
    wait_for(run / "config.yaml")
    try:
        second = cli_here("train", *TINY, "--total-steps", "1000000", "--out", str(tmp_path))
        assert_one_line_error(second, f"in use by another process (pid {process.pid})")
        resumed = cli_here("train", "--resume", str(run))
        assert_one_line_error(resumed, f"(pid {process.pid})")
    finally:
        process.kill()
        process.wait()
    # The kernel released the lock with the process: the folder resumes.
    again = cli("train", "--resume", str(run), "--total-steps", "128")
    assert again.returncode == 0, again.stderr


# ------------------------------------------------------------------------------------- resume contract


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    result = cli("train", *TINY, "--total-steps", "128", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return run_folder(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "algo=a2c"], "--resume: algo is 'ppo' in this run and would become 'a2c'"),
        (["--set", "policy=lstm"], "--resume: policy is 'rims'"),
        (["--set", "rims.num_units=8"], "--resume: rims.num_units is 4"),
        (["--set", "ppo.learning_rate=0.01"], "--resume: ppo.learning_rate"),
        (["--policy", "lstm"], "--policy does not apply with --resume"),
        (["--seed", "3"], "--seed does not apply with --resume"),
        (["--env", "Acrobot-v1"], "--env does not apply with --resume"),
        (["--out", "elsewhere"], "--out does not apply with --resume"),
        (["--config", "atari/ppo_rims.yaml"], "--config does not apply with --resume"),
    ],
)
def test_resume_refuses_a_change_of_experiment_in_one_line(finished_run, args, message):
    before = (finished_run / "config.yaml").read_text()
    result = cli_here("train", "--resume", str(finished_run), *args)
    assert_one_line_error(result, message)
    assert (finished_run / "config.yaml").read_text() == before  # the record is not relabelled


def test_resume_accepts_a_new_budget_and_cadence(finished_run):
    result = cli("train", "--resume", str(finished_run), "--total-steps", "192", "--set", "run.eval_every=64")
    assert result.returncode == 0, result.stderr
    # The rest of the budget, not the whole of it again: 64 more steps, each logged once.
    assert checkpoint_steps(finished_run) == 192
    assert logged_steps(finished_run)[-1] == 192 and len(set(logged_steps(finished_run))) == len(
        logged_steps(finished_run)
    )
    assert "total_steps: 192" in (finished_run / "config.yaml").read_text()


def test_a_run_recorded_before_input_sets_resumes_and_evaluates(tmp_path):
    """A run folder written by a release whose schema had no policy_kwargs.features (config.yaml and the
    checkpoint's config both lack it) resumes and evaluates as the one-row policy it trained."""
    result = cli("train", *TINY, "--total-steps", "128", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    run = run_folder(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["policy_kwargs"]["features"]
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    saved = load_checkpoint(run / "checkpoints" / "latest.pt", "train")
    del saved["config"]["policy_kwargs"]["features"]
    save_checkpoint(run / "checkpoints" / "latest.pt", "train", {k: v for k, v in saved.items() if k != "kind"})
    resumed = cli("train", "--resume", str(run), "--total-steps", "192")
    assert resumed.returncode == 0, resumed.stderr
    assert_exact_record(run, 192)
    assert yaml.safe_load((run / "config.yaml").read_text())["policy_kwargs"]["features"] == "vector"
    evaluated = cli_here("evaluate", str(run), "--episodes", "1")
    assert evaluated.returncode == 0, evaluated.stderr


# ------------------------------------------------------------------------------------- no code on load


class Payload:
    """Unpickling this creates the marker file: what a planted payload would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_in_model_zip(model_zip: Path, marker: Path) -> None:
    """Replace a cloudpickled entry of SB3's model.zip (loaded by SB3's ``load``) with the payload."""
    import base64

    with zipfile.ZipFile(model_zip) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(files["data"])
    serialized = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    data["learning_rate"] = {":type:": "<class 'function'>", ":serialized:": serialized}
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(model_zip, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)


def test_a_tampered_run_folder_never_runs_code(finished_run, tmp_path):
    marker = tmp_path / "pwned"
    plant_in_model_zip(finished_run / "model.zip", marker)
    result = cli_here("evaluate", str(finished_run), "--episodes", "2")
    assert result.returncode == 0 and "mean return" in result.stdout, result.stderr  # model.zip is not read
    assert not marker.exists()

    checkpoint = finished_run / "checkpoints" / "latest.pt"
    good = checkpoint.read_bytes()
    torch.save({"format": 2, "kind": "train", "parameters": Payload(marker)}, checkpoint)
    try:
        for args in (
            ["evaluate", str(finished_run), "--episodes", "2"],
            ["train", "--resume", str(finished_run), "--total-steps", "512"],
            ["visualize", str(finished_run)],
            ["train", *TINY, "--total-steps", "64", "--out", str(tmp_path / "new"), "--set",
             f"run.init_from={finished_run}"],
        ):  # fmt: skip
            result = cli_here(*args)
            assert_one_line_error(result, "holds objects other than tensors and plain data")
            assert not marker.exists(), args
    finally:
        checkpoint.write_bytes(good)


# ------------------------------------------------------------------------------------- wandb


def wandb_records(path: Path):
    """The protobuf records of an offline ``.wandb`` file (LevelDB-style log blocks of 32 KiB)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):  # first or middle chunks
            pending += chunk


def wandb_run(run: Path) -> dict:
    """Group, job type and every (metric, step) pair of a run's offline wandb records (all sessions)."""
    found = {"groups": set(), "job_types": set(), "ids": set(), "pairs": [], "config": set()}
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found["groups"].add(record.run.run_group)
                found["job_types"].add(record.run.job_type)
                found["ids"].add(record.run.run_id)
                found["config"] |= {item.key for item in record.run.config.update if not item.key.startswith("_")}
            elif kind == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                step = items.get("global_step")
                found["pairs"] += [(key, step) for key in items if not key.startswith("_") and key != "global_step"]
    return found


def test_tensorboard_and_wandb_each_step_once_after_kill_9(tmp_path):
    """A tracked run killed with rows past its checkpoint on disk: after the resume TensorBoard shows each
    step once, and the wandb record holds no (metric, step) twice. wandb writes its offline record from a
    process of its own, which a kill -9 takes down with what it had not written yet: those steps may be
    missing from wandb (never doubled)."""
    env = offline_env(tmp_path)
    process = start(tmp_path, "--track", env=env)  # checkpoints every 128 steps, rollouts of 64
    run = run_folder(tmp_path)
    kill_with_rows_past_checkpoint(process, run)
    stopped = checkpoint_steps(run)
    assert max(logged_steps(run)) > stopped  # live: the log went past the checkpoint
    resumed = cli("train", "--resume", str(run), "--total-steps", str(stopped + 256), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert_exact_record(run, stopped + 256)
    pairs = wandb_run(run)["pairs"]
    assert len(pairs) == len(set(pairs)), "a (metric, step) twice in the wandb record"
    assert max(step for _, step in pairs) >= stopped + 256
    assert {step for key, step in pairs if key == "time/fps"} <= set(tensorboard_steps(run))


def test_wandb_records_each_metric_once_per_step_in_one_group_per_curve(tmp_path):
    env = offline_env(tmp_path)
    for policy, seed in (("rims", 0), ("rims", 1), ("lstm", 0)):
        args = ["train", *TINY, "--policy", policy, "--seed", str(seed), "--total-steps", "256"]
        result = cli(*args, "--out", str(tmp_path / "runs"), "--track", env=env)
        assert result.returncode == 0, result.stderr
    resumed = cli("train", "--resume", str(run_folder(tmp_path / "runs")), "--total-steps", "384", env=env)
    assert resumed.returncode == 0, resumed.stderr

    runs = {key: wandb_run(run_folder(tmp_path / "runs", *key)) for key in (("rims", 0), ("rims", 1), ("lstm", 0))}
    for key, found in runs.items():
        assert found["pairs"], key
        assert len(found["pairs"]) == len(set(found["pairs"])), key  # no (metric, step) twice
        assert found["job_types"] == {"CartPole-v1"}
    assert runs["rims", 0]["groups"] == runs["rims", 1]["groups"] == {"CartPole-v1/ppo-rims"}  # seeds aggregate
    assert runs["lstm", 0]["groups"] == {"CartPole-v1/ppo-lstm"}  # another line of the same chart
    assert len(runs["rims", 0]["ids"]) == 1  # the resumed session continued the same wandb run
    assert max(step for _, step in runs["rims", 0]["pairs"]) >= 384
    assert runs["rims", 0]["config"] == {
        "env",
        "algo",
        "total_steps",
        "policy",
        "policy_kwargs",
        "run",
        "ppo",
        "a2c",
        "rims",
        "lstm",
    }  # the run's config, no SB3 internals (_last_obs, ...)


# ------------------------------------------------------------------------------------- bad input


def test_an_unusable_out_is_one_line_before_any_work(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    result = cli("train", *TINY, "--total-steps", "64", "--out", str(a_file))
    assert_one_line_error(result, "is a file, not a folder")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.access(read_only, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: a read-only folder is still writable")
        result = cli("train", *TINY, "--total-steps", "64", "--out", str(read_only))
        assert_one_line_error(result, "cannot write in")
    finally:
        read_only.chmod(0o700)


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, "train", {"num_timesteps": 1})
    good = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # where a full disk shows at the latest
    with pytest.raises(RunError, match=r"disk full while writing .*latest\.pt \(the previous latest\.pt is kept\)"):
        save_checkpoint(path, "train", {"num_timesteps": 2})
    monkeypatch.undo()
    assert path.read_bytes() == good and not list(tmp_path.glob("*.tmp"))


def test_a_loaded_run_acts_on_the_seed_asked_for_not_its_training_seed(finished_run):
    """Building the algorithm seeds its envs with the run's seed; evaluate and visualize re-seed them."""
    from rims_rl.agents.evaluate import load_model

    config = resolve_config(finished_run / "config.yaml")

    def first_observation(seed: int, loaded: bool) -> np.ndarray:
        env = make_env(config.env.settings(), seed=seed, evaluation=True, n_envs=1)
        if loaded:
            env = load_model(finished_run, config, env, "cpu", seed).get_env()
        return env.reset()

    asked = first_observation(12_345, loaded=True)
    np.testing.assert_array_equal(asked, first_observation(12_345, loaded=False))
    assert not np.array_equal(asked, first_observation(config.run.seed, loaded=False))


def test_a_stop_mid_rollout_after_an_evaluation_leaves_each_step_once(tmp_path, monkeypatch):
    """An evaluation in the middle of a rollout (eval_every 96, rollouts of 64 steps), then a stop: the
    checkpoint is the rollout start (64), so the log row and the evaluation at 96 are of steps the resumed
    run takes again. Neither may stay in the record: after the resume each step is logged once and each
    evaluation is there once."""
    import os
    import signal

    import rims_rl.agents.train as train_module
    from rims_rl.agents.train import resolve_config, resume, train
    from tests.helpers import pairs

    class StopAfterEvaluating(train_module.EvalCallback):
        def _on_step(self) -> bool:
            result = super()._on_step()
            if self.num_timesteps == 96 and self.evaluations_timesteps:
                os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler's stop would send
            return result

    settings = [*SETTINGS, "run.eval_every=96", "run.checkpoint_every=1000", f"run.out={tmp_path}", "total_steps=192"]
    config = resolve_config("classic/cartpole.yaml", pairs(*settings))
    monkeypatch.setattr(train_module, "EvalCallback", StopAfterEvaluating)
    train(config)  # stops at the signal, with a checkpoint
    run = run_folder(tmp_path)
    assert checkpoint_steps(run) == 64
    assert 96 in logged_steps(run)  # the log is live: the evaluation's row is there until the resume
    with np.load(run / "evaluations.npz") as evaluations:
        assert evaluations["timesteps"].tolist() == [96]  # written by SB3 at once: the resume must drop it
    monkeypatch.setattr(train_module, "EvalCallback", StopAfterEvaluating.__mro__[1])
    resume(run)
    steps = logged_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 192
    # As TensorBoard shows the event files of both sessions: each rollout's row and each evaluation once.
    assert tensorboard_steps(run) == [64, 128, 192] and tensorboard_steps(run, "eval/mean_reward") == [96, 192]
    with np.load(run / "evaluations.npz") as evaluations:
        assert evaluations["timesteps"].tolist() == [96, 192]


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path):
    result = cli("train", *TINY, "--total-steps", "64", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    run = run_folder(tmp_path)

    def files() -> dict:  # every file but the lock, which holds the pid of the process that looked
        return {
            p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*") if p.is_file() and p.name != ".lock"
        }

    before = files()
    again = cli_here("train", "--resume", str(run))
    assert again.returncode == 0 and "finished at 64 steps, its total_steps: nothing to train" in again.stdout
    assert "Traceback" not in again.stderr
    assert files() == before  # no new model, checkpoint, config or event file


class FakeWandb:
    """What a wandb run is to the log: something that takes points."""

    def __init__(self) -> None:
        self.points = []

    def log(self, values: dict) -> None:
        self.points.append(values["global_step"])


def session(run: Path, resume_from: int, steps: list[int], wandb: FakeWandb | None = None) -> None:
    """One session of training as the log sees it: opened at ``resume_from``, rows at ``steps``, then killed."""
    from rims_rl.agents.logs import RunLog
    from rims_rl.agents.tracking import STEP_FILE, Tracking, _last_sent

    tracking = None
    if wandb is not None:
        step_file = run / STEP_FILE
        tracking = Tracking(wandb, step_file, _last_sent(step_file))
    log = RunLog(run, resume_from=resume_from, tracking=tracking, tensorboard=False)
    for step in steps:
        log.write({"rollout/ep_rew_mean": float(step)}, {}, step)


def test_wandb_is_never_sent_a_step_twice_over_two_stops_in_a_row(tmp_path):
    """Killed past its checkpoint (800), then killed again before logging anything: the third session
    still knows wandb has everything up to 1000 (the CSV, cut back to 800, no longer says so)."""
    wandb = FakeWandb()
    session(tmp_path, 0, [200, 400, 600, 800, 1000], wandb)
    session(tmp_path, 800, [], wandb)
    session(tmp_path, 800, [1000, 1200], wandb)
    assert wandb.points == [200, 400, 600, 800, 1000, 1200]
    assert logged_steps(tmp_path) == [200, 400, 600, 800, 1000, 1200]


def test_a_log_line_a_stop_cut_short_goes_at_the_resume(tmp_path):
    session(tmp_path, 0, [800, 1600])
    path = tmp_path / "progress.csv"
    path.write_text(path.read_text() + "3,24")  # the start of step 2400's line: fields missing, no newline
    session(tmp_path, 1600, [2400])
    assert logged_steps(tmp_path) == [800, 1600, 2400]
    assert path.read_text().endswith("\n")


def test_rows_an_older_checkpoint_held_past_its_step_are_not_written(tmp_path):
    from rims_rl.agents.logs import STEP_KEY, RunLog

    session(tmp_path, 0, [64])
    log = RunLog(tmp_path, resume_from=128, tensorboard=False)
    log.extend([{STEP_KEY: 128, "rollout/ep_rew_mean": 1.0}, {STEP_KEY: 160, "eval/mean_reward": 2.0}])
    assert logged_steps(tmp_path) == [64, 128]  # 160 is past the checkpoint: the resumed run logs it again
