"""``rims-rl report``: per-game scores and CIs, relative improvement, human normalisation, rliable aggregates,
unequal seeds, games without reference scores, the written files, wandb and bad input.

Run folders are faked (config.yaml + evaluations.npz / progress.csv with known numbers) rather than trained.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from rims_rl.agents.compare import compare_runs
from rims_rl.agents.report import aggregate_metrics, load_run_scores, relative_improvement, run_score, write_report
from rims_rl.envs.atari import ATARI_57
from rims_rl.envs.atari_scores import ATARI_REFERENCE_SCORES, human_normalized
from tests.helpers import assert_one_line_error, cli, offline_env

REPS = 50  # stratified-bootstrap resamples: enough to exercise the code, cheap enough for a test


def make_run(
    root: Path,
    env_id: str,
    policy: str,
    seed: int,
    final: float | None = None,
    train: list[float] | None = None,
    label: str | None = None,
) -> Path:
    """A run folder whose final evaluation scores ``final`` (an earlier one scores 0) and / or whose progress.csv
    logs ``train`` as rollout/ep_rew_mean."""
    name = label or f"ppo-{policy}"
    folder = root / env_id.replace("/", "-") / name / f"seed{seed}"
    folder.mkdir(parents=True)
    run = {"seed": seed, **({"label": label} if label else {})}
    config = {"env": {"id": env_id, "n_envs": 1}, "algo": "ppo", "policy": policy, "run": run}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if final is not None:
        results = np.array([[0.0, 0.0], [final - 1.0, final + 1.0]])  # episodes of the final evaluation: mean final
        np.savez(folder / "evaluations.npz", timesteps=np.array([500, 1000]), results=results, ep_lengths=results)
    if train is not None:
        with (folder / "progress.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["time/iterations", "time/total_timesteps", "rollout/ep_rew_mean"])
            writer.writerows([i + 1, 100 * (i + 1), value] for i, value in enumerate(train))
    return folder


def at(game: str, normalized: float) -> float:
    """The raw score of ``game`` whose human-normalised score is ``normalized``."""
    random, human = ATARI_REFERENCE_SCORES[game]
    return random + normalized * (human - random)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def row(rows: list[dict[str, str]], **where: str) -> dict[str, str]:
    (found,) = [r for r in rows if all(r[key] == value for key, value in where.items())]
    return found


def test_run_score_is_the_mean_of_the_last_tenth_of_the_curve(tmp_path):
    assert run_score(np.array([5.0])) == 5.0
    assert run_score(np.arange(11.0)) == 9.5  # ceil(1.1) = 2 points
    assert run_score(np.arange(30.0)) == 28.0  # exactly 3 points, not ceil(0.1 * 30 = 3.0000000000000004)
    make_run(tmp_path, "CartPole-v1", "rims", 0, final=40.0, train=[float(i) for i in range(20)])
    (run,), notes = load_run_scores([tmp_path], "eval")
    assert run.score == 40.0 and notes == []  # the final evaluation only, not the earlier one scoring 0
    (run,), _ = load_run_scores([tmp_path], "train")
    assert run.score == 18.5  # rows 18 and 19 of 20


def test_per_game_means_cis_and_improvement_in_csv_and_markdown(tmp_path):
    for seed, score in enumerate([10.0, 20.0, 60.0]):
        make_run(tmp_path / "runs", "CartPole-v1", "lstm", seed, final=score)
    for seed, score in enumerate([40.0, 50.0]):
        make_run(tmp_path / "runs", "CartPole-v1", "rims", seed, final=score)
    result = write_report([tmp_path / "runs"], tmp_path / "report", reps=REPS)

    rows = read_rows(result["csv"])
    lstm, rims = row(rows, label="ppo-lstm"), row(rows, label="ppo-rims")
    # With 2 or 3 seeds, the bootstrap's 2.5% and 97.5% percentiles are the smallest and largest seed score:
    # every resample of one repeated value has probability 1/4 or 1/27, above 2.5%.
    assert (float(lstm["mean_score"]), float(lstm["ci95_low"]), float(lstm["ci95_high"])) == (30.0, 10.0, 60.0)
    assert (float(rims["mean_score"]), float(rims["ci95_low"]), float(rims["ci95_high"])) == (45.0, 40.0, 50.0)
    assert lstm["seed_list"] == "0 1 2" and rims["seeds"] == "2"
    assert float(rims["relative_improvement"]) == pytest.approx((45 - 30) / 30)  # non-Atari: over |baseline|
    assert rims["baseline"] == "ppo-lstm" and lstm["relative_improvement"] == ""
    assert lstm["normalized_mean"] == ""  # CartPole has no human reference

    markdown = Path(result["md"]).read_text()
    assert "| CartPole-v1 | ppo-lstm | 3 (0, 1, 2) | 30.00 | 10.00 to 60.00 | n/a | n/a | baseline |" in markdown
    assert "| CartPole-v1 | ppo-rims | 2 (0, 1) | 45.00 | 40.00 to 50.00 | n/a | n/a | +50.0% |" in markdown
    assert "not an Atari game with reference scores): CartPole-v1" in markdown
    for name in ("curves", "improvement", "md", "csv"):
        assert Path(result[name]).stat().st_size > 100, name
    assert "aggregates" not in result and "profiles" not in result
    curve = row(read_rows(result["curves_csv"]), run="ppo-lstm", step="1000")
    assert float(curve["mean_return"]) == 30.0


def test_relative_improvement_formula():
    # Atari: over max(variant, baseline) - random; Pong's random score is -20.7.
    assert relative_improvement(10.0, -10.0, "Pong") == pytest.approx(20.0 / 30.7)
    assert relative_improvement(-10.0, 10.0, "Pong") == pytest.approx(-20.0 / 30.7)
    # Both below random: the random score is no yardstick, |baseline| is.
    assert relative_improvement(-21.0, -20.9, "Pong") == pytest.approx(-0.1 / 20.9)
    # Not Atari (or no reference scores): over |baseline|, whatever the sign of the baseline.
    assert relative_improvement(150.0, 100.0, "CartPole-v1") == pytest.approx(0.5)
    assert relative_improvement(-50.0, -100.0, None) == pytest.approx(0.5)
    assert math.isnan(relative_improvement(1.0, 0.0, "CartPole-v1"))


def test_human_normalisation_of_known_games(tmp_path):
    assert set(ATARI_REFERENCE_SCORES) == set(ATARI_57)
    assert human_normalized("Breakout", 30.5) == pytest.approx(1.0)
    assert human_normalized("Breakout", 1.7) == pytest.approx(0.0)
    assert human_normalized("Pong", -3.05) == pytest.approx(0.5)
    assert human_normalized("Pooyan", 100.0) is None

    make_run(tmp_path, "ALE/Breakout-v5", "lstm", 0, final=1.7)  # the random agent's score
    make_run(tmp_path, "BreakoutNoFrameskip-v4", "rims", 0, final=30.5)  # the human's, under another id form
    make_run(tmp_path, "Pong", "lstm", 0, final=0.0)
    make_run(tmp_path, "Pong", "rims", 0, final=-10.0)
    result = write_report([tmp_path], tmp_path / "report", reps=REPS)
    rows = read_rows(result["csv"])
    assert float(row(rows, env="Breakout", label="ppo-lstm")["normalized_mean"]) == pytest.approx(0.0)
    assert float(row(rows, env="Breakout", label="ppo-rims")["normalized_mean"]) == pytest.approx(1.0)
    assert float(row(rows, env="Breakout", label="ppo-rims")["relative_improvement"]) == pytest.approx(1.0)
    assert float(row(rows, env="Pong", label="ppo-rims")["relative_improvement"]) == pytest.approx(-10 / 20.7)
    markdown = Path(result["md"]).read_text()
    assert "| Breakout | ppo-rims | 1 (0) | 30.50 | 30.50 to 30.50 | 1.000 | 1.000 to 1.000 | +100.0% |" in markdown
    assert "| Pong | ppo-rims | 1 (0) | -10.00 | -10.00 to -10.00 | 0.303 | 0.303 to 0.303 | -48.3% |" in markdown


def test_aggregates_are_rliables_on_a_known_array(tmp_path):
    matrix = np.array([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 2.0]])  # runs x games
    points, intervals = aggregate_metrics({"x": matrix}, reps=REPS)
    iqm, median, mean, gap = points["x"]
    assert iqm == pytest.approx(0.35)  # the middle half of the 8 scores: 0.2 .. 0.5
    assert median == pytest.approx(0.35)  # of the per-game means 0.2, 0.3, 0.4, 1.15
    assert mean == pytest.approx(0.5125)
    assert gap == pytest.approx(1 - 3.1 / 8)  # scores above 1 count as 1
    assert np.all(intervals["x"][0] <= points["x"] + 1e-12) and np.all(points["x"] <= intervals["x"][1] + 1e-12)

    games = ["Boxing", "Breakout", "Freeway", "Pong"]  # sorted, as the report's columns
    for seed in range(2):
        for game, value in zip(games, matrix[seed], strict=True):
            make_run(tmp_path, game, "rims", seed, final=at(game, value))
    for game in games:
        make_run(tmp_path, game, "lstm", 0, final=at(game, 0.0))
    result = write_report([tmp_path], tmp_path / "report", reps=REPS)
    rows = read_rows(result["aggregates_csv"])
    rims = row(rows, label="ppo-rims", metric="IQM")
    assert float(rims["value"]) == pytest.approx(0.35) and (rims["runs_per_game"], rims["games"]) == ("2", "4")
    assert float(row(rows, label="ppo-rims", metric="Optimality gap")["value"]) == pytest.approx(1 - 3.1 / 8)
    lstm = row(rows, label="ppo-lstm", metric="Mean")
    assert [float(lstm[key]) for key in ("value", "ci95_low", "ci95_high")] == pytest.approx([0.0, 0.0, 0.0])
    markdown = Path(result["md"]).read_text()
    assert "## Aggregates over 4 games" in markdown and "| ppo-rims | 2 | 0.350 (" in markdown
    assert Path(result["aggregates"]).stat().st_size > 1000 and Path(result["profiles"]).stat().st_size > 1000


def test_unequal_seeds_use_the_same_runs_on_every_game(tmp_path):
    for seed, value in enumerate([0.1, 0.2, 0.9]):
        make_run(tmp_path, "Pong", "rims", seed, final=at("Pong", value))
    for seed, value in enumerate([0.3, 0.4]):
        make_run(tmp_path, "Breakout", "rims", seed, final=at("Breakout", value))
        make_run(tmp_path, "Breakout", "lstm", seed, final=at("Breakout", 0.0))
    make_run(tmp_path, "Pong", "lstm", 0, final=at("Pong", 0.0))
    make_run(tmp_path, "Boxing", "rims", 0, final=at("Boxing", 0.5))  # no LSTM run on Boxing
    result = write_report([tmp_path], tmp_path / "report", reps=REPS)

    rows = read_rows(result["aggregates_csv"])
    rims = row(rows, label="ppo-rims", metric="IQM")
    assert (rims["runs_per_game"], rims["games"]) == ("2", "2")  # Pong seeds 0 and 1; Boxing left out
    assert float(rims["value"]) == pytest.approx(0.25)  # middle of 0.1, 0.2, 0.3, 0.4: seed 2's 0.9 is out
    assert row(rows, label="ppo-lstm", metric="IQM")["runs_per_game"] == "1"
    # The per-game table keeps every seed.
    assert float(row(read_rows(result["csv"]), env="Pong", label="ppo-rims")["normalized_mean"]) == pytest.approx(0.4)
    notes = " ".join(result["notes"])
    assert "ppo-rims on Pong: seeds 2 left out of the aggregates (2 runs per game)" in notes
    assert "ppo-lstm on Breakout: seeds 1 left out" in notes
    assert "not every label has runs on them): Boxing" in notes
    assert "no relative improvement on Boxing: no ppo-lstm runs there" in notes


def test_games_without_reference_scores_are_noted_not_fatal(tmp_path):
    make_run(tmp_path, "CartPole-v1", "rims", 0, final=100.0)
    make_run(tmp_path, "Pooyan", "rims", 0, final=500.0)  # an ALE game outside the 57
    make_run(tmp_path, "Custom/Thing-v0", "rims", 0, final=1.0)  # not registered anywhere
    make_run(tmp_path, "CartPole-v1", "lstm", 0)  # no results yet
    (tmp_path / "copying").mkdir()
    (tmp_path / "copying" / "config.yaml").write_text("models: {rims: {}}\n")  # not a training run
    result = write_report([tmp_path], tmp_path / "report", reps=REPS)

    assert "aggregates" not in result and "improvement" not in result
    notes = "\n".join(result["notes"])
    assert "not an Atari game with reference scores): CartPole-v1, Custom-Thing-v0, Pooyan" in notes
    assert "no aggregates or performance profiles" in notes
    assert "no relative improvement: no label contains 'lstm'" in notes  # the LSTM run had nothing to score
    assert "skipped" in notes and "no eval results yet" in notes and "not a training run" in notes
    markdown = Path(result["md"]).read_text()
    assert "| Pooyan | ppo-rims | 1 (0) | 500.00 |" in markdown and "## Notes" in markdown


def test_explicit_baseline_and_several_lstm_labels(tmp_path):
    for label, score in (("a2c-lstm", 10.0), ("ppo-lstm", 20.0), ("ppo-rims", 30.0)):
        make_run(tmp_path, "CartPole-v1", label.split("-")[1], 0, final=score, label=label)
    result = write_report([tmp_path], tmp_path / "default", reps=REPS)
    assert any("several labels contain 'lstm' (a2c-lstm, ppo-lstm): a2c-lstm" in note for note in result["notes"])
    assert float(row(read_rows(result["csv"]), label="ppo-rims")["relative_improvement"]) == pytest.approx(2.0)
    result = write_report([tmp_path], tmp_path / "chosen", baseline="ppo-lstm", reps=REPS)
    assert float(row(read_rows(result["csv"]), label="ppo-rims")["relative_improvement"]) == pytest.approx(0.5)


def test_cli_report_tracks_offline_without_a_key(tmp_path):
    for policy, score in (("lstm", 10.0), ("rims", 15.0)):
        make_run(tmp_path / "runs", "Pong", policy, 0, final=score)
    out = tmp_path / "report"
    result = cli(
        "report", str(tmp_path / "runs"), "--out", str(out), "--reps", "20", "--track", env=offline_env(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert f"table: {out / 'report.md'}" in result.stdout and "wandb: " in result.stdout
    (run,) = (out / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb"))  # ready for `wandb sync`
    media = run / "files" / "media"
    assert sorted(path.name.split("_")[0] for path in (media / "images").glob("*.png")) == [
        "aggregates", "curves", "improvement", "profiles",
    ]  # fmt: skip
    tables = sorted(path.name for path in (media / "table").glob("*.table.json"))
    assert [name.rsplit("_", 2)[0] for name in tables] == ["aggregates_table", "curves_table", "per_game"]
    assert "| Pong | ppo-rims | 1 (0) | 15.00 |" in (out / "report.md").read_text()


def test_a_broken_wandb_only_warns(tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise ConnectionError("wandb is unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    make_run(tmp_path / "runs", "CartPole-v1", "rims", 0, final=1.0)
    with pytest.warns(UserWarning, match="wandb: the report was not logged: wandb is unreachable"):
        result = write_report([tmp_path / "runs"], tmp_path / "report", track=True, reps=REPS)
    assert result["wandb"] is None and Path(result["md"]).is_file()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", [], "no run folders (with config.yaml) found in"),
        ("runs", ["--baseline", "ppo-gru"], "--baseline: unknown label 'ppo-gru'; the runs have ppo-lstm, ppo-rims"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, setup, args, message):
    (tmp_path / "empty").mkdir()
    for policy in ("lstm", "rims"):
        make_run(tmp_path / "runs", "CartPole-v1", policy, 0, final=1.0)
    result = cli("report", str(tmp_path / setup), "--out", str(tmp_path / "report"), *args)
    assert_one_line_error(result, message)


def test_runs_of_two_experiments_under_one_label_are_refused_not_pooled(tmp_path):
    """A label's runs on a game are the seeds of one experiment: a run with another setting, or a copy of a
    seed from another folder, is one line naming both runs; runs that differ only in what seeds may (seed,
    folder, budget, starting weights) are scored together."""
    from rims_rl.agents.config import ConfigError

    def edit(run: Path, **settings) -> None:
        config = yaml.safe_load((run / "config.yaml").read_text())
        for dotted, value in settings.items():
            *parents, key = dotted.split("__")
            node = config
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = value
        (run / "config.yaml").write_text(yaml.safe_dump(config))

    first = make_run(tmp_path / "a", "Pong", "rims", 0, final=1.0)
    second = make_run(tmp_path / "a", "Pong", "rims", 1, final=3.0)
    edit(first, run__init_from="source/seed0", total_steps=100)
    edit(second, run__init_from="source/seed1", total_steps=200, run__out="elsewhere")
    runs, _ = load_run_scores([tmp_path / "a"])
    assert [run.seed for run in runs] == [0, 1]

    edit(second, rims__num_units=8)
    with pytest.raises(ConfigError, match=r"both ppo-rims on Pong but differ in rims\.num_units \(None vs 8\)"):
        load_run_scores([tmp_path / "a"])
    edit(second, rims__num_units=None)
    make_run(tmp_path / "b", "Pong", "rims", 0, final=9.0)
    edit(tmp_path / "b" / "Pong" / "ppo-rims" / "seed0", run__init_from="source/seed0", total_steps=100)
    with pytest.raises(ConfigError, match="with seed 0: one experiment's seeds must differ"):
        load_run_scores([tmp_path / "a", tmp_path / "b"])


def test_bad_settings_raise_config_errors(tmp_path):
    from rims_rl.agents.config import ConfigError

    make_run(tmp_path, "CartPole-v1", "rims", 0, final=1.0)
    with pytest.raises(ConfigError, match="--reps must be at least 1"):
        write_report([tmp_path], tmp_path / "report", reps=0)
    with pytest.raises(ConfigError, match="--source must be train or eval"):
        write_report([tmp_path], tmp_path / "report", source="test")
    with pytest.raises(ConfigError, match="the runs have no train learning curves yet"):
        write_report([tmp_path], tmp_path / "report", source="train")


def test_report_help_documents_every_option(capsys):
    from rims_rl.agents.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--source", "--baseline", "--reps", "--seed", "--track", "--wandb-project"):
        assert option in text, option


def test_compare_lays_many_games_out_in_rows(tmp_path):
    games = ["Alien", "Boxing", "Breakout", "Freeway", "Pong"]
    for game in games:
        make_run(tmp_path, game, "rims", 0, final=1.0)
    result = compare_runs([tmp_path], tmp_path / "cmp", source="eval")
    from PIL import Image

    width, height = Image.open(result["png"]).size
    assert 4 * height > width  # 2 rows of up to 4 panels (24 x 8 inches), not 5 panels in one row (30 x 4)
    assert sorted(result["groups"]) == games
