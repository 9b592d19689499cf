"""``rims-rl sweep``: grid expansion and checks, skip / resume / interrupt, a failing run, the Ray backend."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rims_rl.agents.checkpointing import load_checkpoint
from rims_rl.agents.cli import main
from rims_rl.agents.config import ConfigError
from rims_rl.agents.runs import learning_curve
from rims_rl.agents.sweep import load_sweep, plan
from tests.helpers import TINY_PPO, assert_one_line_error, cli, cli_here, pairs

# Seconds-long CartPole runs: no evaluation, tiny rollouts, frequent checkpoints.
TINY = dict(pairs(*TINY_PPO, "run.eval_every=0", "run.checkpoint_every=64", "total_steps=256"))


def write_sweep(folder: Path, **spec) -> Path:
    """A sweep file in ``folder`` over classic/cartpole.yaml, its runs in ``folder/out``."""
    spec = {"command": "train", "config": "classic/cartpole.yaml", "out": str(folder / "out"), **spec}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def summary(out: Path) -> dict[str, dict]:
    return {row["run"]: row for row in json.loads((out / "sweep.json").read_text())["runs"]}


def steps_in_checkpoint(run: Path) -> int:
    return load_checkpoint(run / "checkpoints" / "latest.pt", "train")["num_timesteps"]


# ------------------------------------------------------------------------------------- expansion


def test_grid_expands_games_x_seeds_x_variants_with_their_overrides(tmp_path):
    path = write_sweep(
        tmp_path,
        grid={"env.id": ["CartPole-v1", "Acrobot-v1"], "run.seed": [0, 1, 2]},
        variants={
            "rims": {},
            "rims-no-input-attention": {"rims.input_attention": False},
            "lstm": {"policy": "lstm", "total_steps": 512},
        },
        overrides={"run.progress": False, "ppo.n_epochs": 3},
    )
    sweep = load_sweep(path, [("ppo.n_epochs", 1), ("run.device", "cpu")])
    assert len(sweep.runs) == 2 * 3 * 3
    names = [run.name for run in sweep.runs]
    assert names[:4] == [
        "CartPole-v1/rims/seed0",
        "CartPole-v1/rims-no-input-attention/seed0",
        "CartPole-v1/lstm/seed0",
        "CartPole-v1/rims/seed1",
    ]
    assert names[-1] == "Acrobot-v1/lstm/seed2"
    assert len(set(names)) == len(names)
    for run in sweep.runs:
        config, variant = run.config, run.settings["variant"]
        assert Path(run.run_dir) == (tmp_path / "out" / run.name).resolve()
        assert config["env"]["id"] == run.settings["env.id"] and config["run"]["seed"] == run.settings["run.seed"]
        assert config["run"]["label"] == variant and config["run"]["out"] == str(tmp_path / "out")
        assert config["run"]["device"] == "cpu" and config["run"]["progress"] is False
        assert config["ppo"]["n_epochs"] == 1  # --set comes after the sweep's own overrides
        assert config["policy"] == ("lstm" if variant == "lstm" else "rims")
        assert config["total_steps"] == (512 if variant == "lstm" else 20000)  # else: the config's default
        assert (config["rims"].get("input_attention") is False) == (variant == "rims-no-input-attention")

    # --dry-run's listing says what a sweep would do with each run, from what its folder holds.
    (Path(sweep.runs[0].run_dir) / "model.zip").parent.mkdir(parents=True)
    (Path(sweep.runs[0].run_dir) / "model.zip").write_bytes(b"")
    (Path(sweep.runs[1].run_dir) / "checkpoints").mkdir(parents=True)
    (Path(sweep.runs[1].run_dir) / "checkpoints" / "latest.pt").write_bytes(b"")
    lines = plan(sweep).splitlines()
    assert lines[0] == f"18 runs (2 env.id x 3 run.seed x 3 variants) in {tmp_path / 'out'}"
    assert [line.split()[1] for line in lines[1:4]] == ["done", "resume", "train"]


def test_without_variants_runs_take_the_default_label(tmp_path):
    path = write_sweep(tmp_path, grid={"policy": ["rims", "lstm"], "run.seed": [3]})
    names = [run.name for run in load_sweep(path).runs]
    assert names == ["CartPole-v1/ppo-rims/seed3", "CartPole-v1/ppo-lstm/seed3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"grid": {"run.seed": [0]}, "workerz": 2}, "unknown config key 'workerz'; did you mean workers?"),
        ({"variants": {"rims": {}}}, "SweepConfig lacks grid"),
        ({"grid": {}}, "grid is empty"),
        ({"grid": {"run.seed": 0}}, "grid.run.seed must be a list of values, got 0"),
        ({"grid": {"run.seed": []}}, "grid.run.seed must be a non-empty list"),
        ({"grid": {"run.seed": [0]}, "variants": {}}, "variants is empty"),
        ({"grid": {"run.seed": [0]}, "variants": {"no attention": {}}}, "variant name 'no attention'"),
        ({"grid": {"run.seed": [0]}, "variants": {"a": {"run.seed": 1}}}, "run.seed is set by both grid and"),
        ({"grid": {"run.seed": [0]}, "overrides": {"run.out": "x"}}, "overrides sets run.out, which the sweep sets"),
        ({"grid": {"run.seed": [0]}, "workers": 0}, "workers must be in [1, 4096], got 0"),
        ({"grid": {"env.id": ["CartPole-v9"]}}, "run env.id=CartPole-v9: unknown environment"),
        ({"grid": {"run.seed": [0]}, "variants": {"x": {"rims.k_active": 9}}}, "rims: k_active must be an integer in"),
        ({"grid": {"run.seed": [0]}, "variants": {"x": {"ppo.n_stepz": 9}}}, "unknown config key 'ppo.n_stepz'"),
        ({"grid": {"rims.k_active": [1, 2]}}, "would share the folder"),
    ],
)
def test_bad_sweep_files_fail_with_one_line_before_anything_runs(tmp_path, spec, message):
    path = tmp_path / "sweep.yaml"
    base = {"command": "train", "config": "classic/cartpole.yaml", "out": str(tmp_path / "out")}
    path.write_text(yaml.safe_dump({**base, **spec}))
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_bad_sweep_through_the_cli_is_one_line_and_starts_nothing(tmp_path):
    path = write_sweep(tmp_path, grid={"run.seed": [0, 1]}, variants={"rims": {"rims.k_active": 7}})
    result = cli_here("sweep", "--config", str(path))
    assert_one_line_error(result, "run run.seed=0, variant=rims: rims: k_active must be an integer in [1, num_units=4]")
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_the_shipped_sweeps_and_help_documents_every_option(tmp_path, capsys):
    assert main(["sweep", "--config", "sweeps/atari_rims_vs_lstm.yaml", "--out", str(tmp_path), "--dry-run"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == f"24 runs (4 env.id x 3 run.seed x 2 variants) in {tmp_path}"
    assert listing[1].split()[:2] == ["Pong/rims/seed0", "train"] and "Pong/lstm/seed0" in listing[2]
    assert main(["sweep", "--config", "sweeps/cartpole_ablations.yaml", "--out", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("15 runs (3 run.seed x 5 variants)")
    assert not any(tmp_path.iterdir())

    with pytest.raises(SystemExit) as exited:
        main(["sweep", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--backend", "--address", "--workers", "--device", "--out", "--set", "--dry-run"):
        assert option in text, option


def test_reserved_keys_cuda_without_a_gpu_and_a_missing_ray_fail_with_one_line(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, grid={"run.seed": [0]})
    assert main(["sweep", "--config", str(path), "--set", "run.label=x"]) == 2
    assert "--set run.label: the sweep sets it" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["sweep", "--config", str(path), "--device", "cuda"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "run run.seed=0: run.device: device 'cuda' was asked for" in error
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    assert main(["sweep", "--config", str(path), "--backend", "ray"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "rims-rl sweep: error: --backend ray: install the ray extra: pip install" in error
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- running


def stop_a_sweep_midway(tmp_path: Path, *options: str) -> tuple[Path, int]:
    """Run a sweep of two runs, rims (256 steps) and lstm (a million), and SIGTERM it once rims has finished
    and lstm has a checkpoint. Checks what the stop leaves; returns the sweep file and lstm's step count."""
    out = tmp_path / "out"
    path = write_sweep(
        tmp_path,
        grid={"run.seed": [0]},
        variants={"rims": {"total_steps": 256}, "lstm": {"policy": "lstm", "total_steps": 1_000_000}},
        overrides={key: value for key, value in TINY.items() if key != "total_steps"},
        workers=2,
    )
    rims, lstm = out / "CartPole-v1" / "rims" / "seed0", out / "CartPole-v1" / "lstm" / "seed0"
    process = subprocess.Popen(
        [sys.executable, "-m", "rims_rl", "sweep", "--config", str(path), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 180
    while not ((rims / "model.zip").exists() and (lstm / "checkpoints" / "latest.pt").exists()):
        assert time.time() < deadline and process.poll() is None, "the runs did not get going"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # a scheduler stopping the sweep
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted; run the same command again to resume" in stderr and "Traceback" not in stderr
    rows = summary(out)
    assert rows["CartPole-v1/rims/seed0"]["status"] == "trained"
    assert rows["CartPole-v1/lstm/seed0"]["status"] == "interrupted"
    assert "stopped by signal 15; checkpoint saved" in rows["CartPole-v1/lstm/seed0"]["error"]
    assert not (lstm / "model.zip").exists()
    stopped_at = steps_in_checkpoint(lstm)
    assert 0 < stopped_at < 1_000_000
    assert yaml.safe_load((rims / "config.yaml").read_text())["run"]["label"] == "rims"
    assert yaml.safe_load((lstm / "config.yaml").read_text())["policy"] == "lstm"
    assert (rims / "sweep.log").read_text().rstrip().endswith("rims-rl sweep result: trained")
    return path, stopped_at


def check_resumed(out: Path, stopped_at: int, rims_log: str) -> None:
    """After a second sweep: rims skipped (untouched), lstm continued from its checkpoint to the new total."""
    rims, lstm = out / "CartPole-v1" / "rims" / "seed0", out / "CartPole-v1" / "lstm" / "seed0"
    rows = summary(out)
    assert rows["CartPole-v1/rims/seed0"]["status"] == "done"
    assert rows["CartPole-v1/lstm/seed0"]["status"] == "resumed"
    assert stopped_at + 64 <= steps_in_checkpoint(lstm) < stopped_at + 128
    assert (lstm / "model.zip").is_file()
    steps = learning_curve(lstm, "train")[0]  # continued, not restarted: each step once, in order
    assert steps[0] <= stopped_at < steps[-1]
    assert steps_in_checkpoint(rims) == 256 and (rims / "sweep.log").read_text() == rims_log


def test_sweep_trains_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path, capsys):
    path, stopped_at = stop_a_sweep_midway(tmp_path)
    out = tmp_path / "out"
    rims_log = (out / "CartPole-v1" / "rims" / "seed0" / "sweep.log").read_text()

    # Again, with a total within reach (--set comes last): the finished run is skipped, the interrupted
    # one resumed.
    again = ["sweep", "--config", str(path), "--set", f"total_steps={stopped_at + 64}"]
    assert main(again) == 0
    assert "2 runs: 1 done, 1 resumed" in capsys.readouterr().out
    check_resumed(out, stopped_at, rims_log)

    # Once more: nothing left to do, no run process started.
    assert main(again) == 0
    assert "2 runs: 2 done" in capsys.readouterr().out
    assert {row["status"] for row in summary(out).values()} == {"done"}


def test_a_failing_run_is_reported_and_the_others_still_run(tmp_path, capsys):
    out = tmp_path / "out"
    path = write_sweep(
        tmp_path,
        grid={"run.seed": [0]},
        # run.init_from is checked only when the run starts: the sweep's checks pass, the run fails (within
        # seconds, while the good run trains beside it).
        variants={"broken": {"run.init_from": str(tmp_path / "no-such-run")}, "rims": {}},
        overrides=TINY,
        workers=2,
    )
    assert main(["sweep", "--config", str(path)]) == 1
    printed = capsys.readouterr().out
    assert "2 runs: 1 trained, 1 failed" in printed
    rows = summary(out)
    broken = rows["CartPole-v1/broken/seed0"]
    assert broken["status"] == "failed"
    assert broken["error"].startswith("ConfigError: run.init_from: no trained model at")
    assert broken["error"] in printed
    assert "Traceback" in Path(broken["log"]).read_text()
    assert rows["CartPole-v1/rims/seed0"]["status"] == "trained"
    assert (out / "CartPole-v1" / "rims" / "seed0" / "model.zip").is_file()
    csv_rows = (out / "sweep.csv").read_text().splitlines()
    assert csv_rows[0] == "run,run.seed,variant,status,seconds,error,run_dir,log"
    assert csv_rows[1].startswith("CartPole-v1/broken/seed0,0,broken,failed,")


@pytest.mark.ray
def test_ray_backend_runs_stops_and_resumes_the_grid_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    ray_cpu = ("--backend", "ray", "--device", "cpu")
    path, stopped_at = stop_a_sweep_midway(tmp_path, *ray_cpu)  # tasks on a local Ray instance
    out = tmp_path / "out"
    assert json.loads((out / "sweep.json").read_text())["backend"] == "ray"
    assert not (out / "sweep.stop").exists()
    rims_log = (out / "CartPole-v1" / "rims" / "seed0" / "sweep.log").read_text()

    result = cli("sweep", "--config", str(path), *ray_cpu, "--set", f"total_steps={stopped_at + 64}", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 runs: 1 done, 1 resumed" in result.stdout
    check_resumed(out, stopped_at, rims_log)


def test_a_sweep_says_where_its_runs_are_while_they_train(tmp_path, monkeypatch):
    """Between the runs' ends a sweep prints a line per heartbeat with each running run's last logged step."""
    from rims_rl.agents import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "HEARTBEAT_SECONDS", 0.5)
    spec = {"grid": {"run.seed": [0]}, "overrides": {**TINY, "total_steps": 2048}, "workers": 1}
    lines = []
    result = sweep_module.run_sweep(load_sweep(write_sweep(tmp_path, **spec)), log=lines.append)
    assert result["failed"] == 0
    beats = [line for line in lines if line.startswith("running: ")]
    assert beats and any(" at " in line and "of 2,048" in line for line in beats), lines
