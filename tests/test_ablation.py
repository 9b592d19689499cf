"""The ablation runner: the paper's variants as a sweep, then one report."""

from __future__ import annotations

import yaml

from rims_rl.agents.ablation import ablation_sweep
from tests.helpers import TINY_PPO, assert_one_line_error, cli, cli_here

TINY = [*TINY_PPO, "run.eval_every=0"]


def test_the_packaged_ablation_has_the_papers_variants_and_options():
    spec = ablation_sweep()
    assert spec["config"] == "atari/ppo_rims.yaml"
    assert spec["variants"] == {
        "rims": {},
        "rims-no-input-attention": {"rims.input_attention": False},
        "lstm": {"policy": "lstm"},
    }
    spec = ablation_sweep(games=["Alien"], seeds=[4], all_active=True, no_communication=True)
    assert spec["grid"] == {"env.id": ["Alien"], "run.seed": [4]}
    assert spec["variants"]["rims-all-active"] == {"rims.k_active": 6}  # num_units of atari/ppo_rims.yaml
    assert spec["variants"]["rims-no-communication"] == {"rims.communication": False}


def test_ablate_trains_every_variant_reports_and_reuses_runs(tmp_path):
    spec = ablation_sweep()
    spec.update(config="classic/cartpole.yaml", out=str(tmp_path / "out"))
    spec["grid"] = {"env.id": ["CartPole-v1"], "run.seed": [0]}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec))
    args = [
        "ablate",
        "--config",
        str(path),
        "--all-active",
        "--total-steps",
        "64",
        "--source",
        "train",
        "--workers",
        "2",
    ]
    for item in TINY:
        args += ["--set", item]
    result = cli(*args, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = tmp_path / "out" / "CartPole-v1"
    labels = {"rims", "rims-no-input-attention", "lstm", "rims-all-active"}
    assert {p.name for p in runs.iterdir()} == labels
    for label in labels:
        assert (runs / label / "seed0" / "model.zip").is_file()
    saved = yaml.safe_load((runs / "rims-no-input-attention" / "seed0" / "config.yaml").read_text())
    assert saved["rims"]["input_attention"] is False and saved["policy"] == "rims"
    saved = yaml.safe_load((runs / "rims-all-active" / "seed0" / "config.yaml").read_text())
    assert saved["rims"]["k_active"] == saved["rims"]["num_units"] == 4
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    for label in labels:
        assert label in report
    assert (tmp_path / "out" / "ablation.yaml").is_file()

    again = cli(*args, timeout=600)
    assert again.returncode == 0 and f"{len(labels)} runs: {len(labels)} done" in again.stdout, again.stdout


def test_ablate_bad_input_is_one_line_and_writes_nothing(tmp_path):
    result = cli_here("ablate", "--games", "Pongg", "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "did you mean Pong")
    assert not (tmp_path / "out" / "ablation.yaml").exists()
    result = cli_here("ablate", "--address", "auto", "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "--address is for --backend ray")
    # A budget too short for one evaluation would train every run and then have nothing to report.
    result = cli_here("ablate", "--games", "Pong", "--total-steps", "1000", "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "make no evaluation for the report to score")
    assert not (tmp_path / "out" / "ablation.yaml").exists()
