"""MiniGrid object picking with distractors: the environment, its splits, and the commands around it."""

from __future__ import annotations

import csv
import warnings
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from rims_rl.agents.evaluate import evaluate_run
from rims_rl.envs import make_env
from rims_rl.envs.minigrid import (
    VOCABULARY,
    MissionIds,
    PickupDistractorsEnv,
    encode_mission,
    make_pickup_env,
    pickup_defaults,
)
from rims_rl.extractors import MiniGridExtractor
from tests.helpers import assert_one_line_error, cli, cli_here

POOLS = pickup_defaults()["pools"]
NOVEL_ONLY = {tuple(p) for p in POOLS["B"]} - {tuple(p) for p in POOLS["A"]}
TRAINING_PAIRS = {tuple(p) for p in POOLS["A"]} | {tuple(t) for t in pickup_defaults()["targets"]}


def objects_on_grid(env) -> list[tuple[str, str]]:
    return [(cell.type, cell.color) for cell in env.unwrapped.grid.grid if cell is not None and cell.type != "wall"]


def test_environment_checkers_pass():
    raw = make_pickup_env("novel")
    gym_check_env(raw, skip_render_check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3's checker warns about anything it would mishandle
        sb3_check_env(MissionIds(make_pickup_env("train"), mission_length=8))
        sb3_check_env(MissionIds(gym.make("BabyAI-PickupDist-v0").unwrapped, mission_length=8))


def test_no_novel_pair_ever_appears_in_a_training_episode():
    env = make_pickup_env("train")
    counts = set()
    for seed in range(400):
        env.reset(seed=seed)
        placed = objects_on_grid(env)
        assert not set(placed) & NOVEL_ONLY, (seed, placed)
        assert set(placed) <= TRAINING_PAIRS
        counts.add(len(placed) - 1)
    assert counts == {1, 2}  # the configured count range, both ends drawn


def _distractor_counts(split: str, episodes: int = 300) -> tuple[Counter, set]:
    """How many distractors each episode of ``split`` had, and every distractor pair seen."""
    env = make_pickup_env(split)
    counts, pairs = Counter(), set()
    for seed in range(episodes):
        env.reset(seed=seed)
        distractors = env.unwrapped.distractors
        assert env.unwrapped.target not in distractors
        assert sorted(objects_on_grid(env)) == sorted([env.unwrapped.target, *distractors])
        counts[len(distractors)] += 1
        pairs |= set(distractors)
    return counts, pairs


def test_novel_split_changes_only_novelty():
    """Novel distractors come in the training split's numbers, each one a pair never seen in training."""
    train_counts, train_pairs = _distractor_counts("train")
    novel_counts, novel_pairs = _distractor_counts("novel")
    assert novel_pairs <= NOVEL_ONLY and not novel_pairs & train_pairs
    assert set(novel_counts) == set(train_counts) == {1, 2}
    for count in (1, 2):  # about half each, in both splits
        assert 0.4 < novel_counts[count] / 300 < 0.6 and 0.4 < train_counts[count] / 300 < 0.6


def test_crowded_split_adds_novel_distractors_to_known_ones():
    env = make_pickup_env("crowded")
    for seed in range(200):
        env.reset(seed=seed)
        distractors = env.unwrapped.distractors
        novel = [pair for pair in distractors if pair in NOVEL_ONLY]
        assert 2 <= len(novel) <= 3 and 1 <= len(distractors) - len(novel) <= 2
        assert sorted(objects_on_grid(env)) == sorted([env.unwrapped.target, *distractors])


def test_mission_names_the_placed_target():
    env = MissionIds(make_pickup_env("known"), mission_length=8)
    for seed in range(100):
        obs, _ = env.reset(seed=seed)
        kind, colour = env.unwrapped.target
        assert env.unwrapped.mission == f"pick up the {colour} {kind}"
        assert objects_on_grid(env).count((kind, colour)) == 1
        assert obs["mission"].tolist()[:5] == [VOCABULARY.index(w) for w in ("pick", "up", "the", colour, kind)]


def _face(env, pair) -> None:
    """Teleport the agent next to the object ``pair``, facing it."""
    base = env.unwrapped
    for index, cell in enumerate(base.grid.grid):
        if cell is not None and (cell.type, cell.color) == pair:
            x, y = index % base.width, index // base.width
            break
    for direction, (dx, dy) in enumerate([(1, 0), (0, 1), (-1, 0), (0, -1)]):
        spot = (x - dx, y - dy)
        if base.grid.get(*spot) is None and 0 < spot[0] < base.width - 1 and 0 < spot[1] < base.height - 1:
            base.agent_pos, base.agent_dir = np.array(spot), direction
            return
    raise AssertionError("no free cell beside the object")


@pytest.mark.parametrize("turns", [0, 5])
def test_reward_formula_and_wrong_pickup(turns):
    env = make_pickup_env("train")
    for seed in range(20):
        env.reset(seed=seed)
        for _ in range(turns):
            env.step(env.unwrapped.actions.left)
        _face(env, env.unwrapped.target)
        _, reward, terminated, truncated, _ = env.step(env.unwrapped.actions.pickup)
        assert terminated and not truncated
        assert reward == pytest.approx(1 - 0.9 * (turns + 1) / env.unwrapped.max_steps)

        env.reset(seed=seed)
        _face(env, env.unwrapped.distractors[0])
        _, reward, terminated, _, _ = env.step(env.unwrapped.actions.pickup)
        assert terminated and reward == 0


def test_wrong_pickup_can_continue_and_time_runs_out():
    env = make_pickup_env("train", end_on_wrong_pickup=False, max_steps=10)
    assert env.action_space.n == 5  # drop is needed to go on
    env.reset(seed=3)
    _face(env, env.unwrapped.distractors[0])
    _, reward, terminated, _, _ = env.step(env.unwrapped.actions.pickup)
    assert not terminated and reward == 0 and env.unwrapped.carrying is not None
    for _ in range(8):
        _, _, _, truncated, _ = env.step(env.unwrapped.actions.left)
        assert not truncated
    _, reward, terminated, truncated, _ = env.step(env.unwrapped.actions.left)
    assert truncated and not terminated and reward == 0


def test_seeded_resets_and_episodes_are_deterministic():
    def trajectory(seed):
        env = make_env({**pickup_defaults(), "n_envs": 2}, seed=seed)
        observations = [env.reset()]
        actions = np.random.default_rng(0).integers(0, 4, size=(60, 2))
        for action in actions:
            observations.append(env.step(action)[0])
        env.close()
        return np.concatenate([np.concatenate([o["image"], o["mission"]], axis=1) for o in observations])

    np.testing.assert_array_equal(trajectory(7), trajectory(7))
    assert not np.array_equal(trajectory(7), trajectory(8))


def test_mission_encoding():
    ids = encode_mission("Pick up the RED ball, then zebra!", 5)
    assert ids.tolist() == [VOCABULARY.index(w) for w in ("pick", "up", "the", "red", "ball")]
    assert encode_mission("go to zebra", 5).tolist() == [VOCABULARY.index("go"), VOCABULARY.index("to"), 1, 0, 0]


def test_extractor_reads_cells_and_word_order_with_gradients():
    env = MissionIds(make_pickup_env("train"), mission_length=8)
    extractor = MiniGridExtractor(env.observation_space)
    obs, _ = env.reset(seed=0)
    batch = {key: torch.as_tensor(np.stack([value, value])).float() for key, value in obs.items()}
    swapped = batch["mission"].clone()
    swapped[1, 3], swapped[1, 4] = batch["mission"][1, 4], batch["mission"][1, 3]
    features = extractor({"image": batch["image"], "mission": swapped})
    assert features.shape == (2, extractor.features_dim)
    assert not torch.allclose(features[0], features[1])  # "red ball" != "ball red"
    moved = batch["image"].clone()
    moved[1] = torch.roll(moved[1].view(7, 7, 3), 1, dims=0).flatten()
    assert not torch.allclose(extractor(batch)[0], extractor({**batch, "image": moved})[1])
    features.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extractor.parameters())
    with pytest.raises(ValueError, match="flattened"):
        flat = gym.spaces.Box(0, 1, (5,))
        MiniGridExtractor(gym.spaces.Dict({"image": flat, "mission": env.observation_space["mission"]}))


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="split must be one of"):
        make_pickup_env("held-out")
    crowded = {**pickup_defaults()["splits"], "novel": [{"pool": "B", "count": [7, 8]}]}
    with pytest.raises(ValueError, match="do not fit"):
        make_pickup_env("novel", size=5, splits=crowded)
    with pytest.raises(ValueError, match="unknown pool"):
        make_pickup_env("novel", splits={**crowded, "novel": [{"pool": "C", "count": [1, 1]}]})
    with pytest.raises(ValueError, match="unknown settings colour"):
        make_pickup_env(colour="red")


TINY = [
    "--config", "minigrid/pickup.yaml",
    "--set", "env.n_envs=2", "--set", "ppo.n_steps=32", "--set", "ppo.batch_size=32", "--set", "ppo.n_epochs=1",
    "--set", "run.progress=false", "--set", "run.eval_every=0",
]  # fmt: skip


@pytest.mark.parametrize(("policy", "algo"), [("rims", "ppo"), ("lstm", "a2c")])
def test_train_then_evaluate_both_splits_and_visualize(policy, algo, tmp_path, monkeypatch):
    args = ["--policy", policy, "--algo", algo, "--total-steps", "128", "--out", str(tmp_path)]
    result = cli("train", *TINY, *args)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "RimsRL-Pickup-v0" / f"{algo}-{policy}" / "seed0"
    for split in ("known", "novel"):
        result = cli_here("evaluate", str(run), "--episodes", "6", "--distractors", split)
        assert result.returncode == 0, result.stderr
        assert f"({split} distractors)" in result.stdout and "success rate" in result.stdout
    # The episodes played are those of the split asked for: novel objects in every novel episode only.
    placed = {"known": [], "novel": []}
    generate = PickupDistractorsEnv._gen_grid
    for split in placed:

        def recording(self, width, height, split=split):
            generate(self, width, height)
            placed[split].append(set(self.distractors))

        monkeypatch.setattr(PickupDistractorsEnv, "_gen_grid", recording)
        evaluate_run(run, episodes=4, distractors=split)
    assert len(placed["novel"]) >= 4 and all(objects & NOVEL_ONLY for objects in placed["novel"])
    assert placed["known"] and not any(objects & NOVEL_ONLY for objects in placed["known"])
    result = cli_here("visualize", str(run), "--distractors", "novel")
    assert result.returncode == 0, result.stderr
    assert (run / "visualize" / "episode.gif").stat().st_size > 0
    assert (run / "visualize" / "activations.png").exists() == (policy == "rims")


def test_distractors_on_a_run_elsewhere_and_foreign_settings_fail_clearly(tmp_path):
    result = cli_here(
        "train", "--config", "minigrid/pickup.yaml", "--env", "BabyAI-PickupDist-v0", "--out", str(tmp_path)
    )
    assert_one_line_error(result, "unknown config keys env.end_on_wrong_pickup")
    result = cli_here("train", *TINY, "--set", "env.split=heldout", "--out", str(tmp_path))
    assert_one_line_error(result, "split must be one of")


def test_standard_babyai_id_trains_through_the_same_cli(tmp_path):
    args = ["--config", "minigrid/babyai.yaml", "--env", "MiniGrid-Fetch-5x5-N2-v0", *TINY[2:]]
    result = cli("train", *args, "--total-steps", "64", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    run = tmp_path / "MiniGrid-Fetch-5x5-N2-v0" / "ppo-rims" / "seed0"
    result = cli_here("evaluate", str(run), "--episodes", "2", "--distractors", "novel")
    assert_one_line_error(result, "--distractors needs a run on RimsRL/Pickup")


def test_experiment_writes_table_and_plot(tmp_path):
    out = tmp_path / "experiment"
    args = ["--seeds", "0", "1", "--variants", "rims-set", "lstm", "--total-steps", "64", "--episodes", "4"]
    result = cli("experiment-distractors", *args, "--out", str(out), *TINY[2:], timeout=600)
    assert result.returncode == 0, result.stderr
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["variant"], r["seed"], r["split"]) for r in rows} == {
        (v, s, split) for v in ("rims-set", "lstm") for s in ("0", "1") for split in ("known", "novel", "crowded")
    }
    assert all(int(r["episodes"]) == 4 and float(r["wilson_low"]) <= float(r["success_rate"]) for r in rows)
    table = (out / "results.md").read_text()
    assert "| rims-set | novel |" in table and "| lstm | known |" in table and "| rims-set | " in table.split("Drop")[1]
    assert (out / "results.png").stat().st_size > 0
    config = (out / "RimsRL-Pickup-v0" / "rims-set" / "seed0" / "config.yaml").read_text()
    assert "features: set" in config
    # A second call reuses the finished runs instead of training again.
    again = cli_here("experiment-distractors", *args, "--out", str(out), *TINY[2:])
    assert again.returncode == 0 and "done" in again.stdout and "trained" not in again.stdout
    bad = cli_here("experiment-distractors", "--variants", "gru", "--out", str(out))
    assert_one_line_error(bad, "--variants: gru not in sweeps/pickup_sets.yaml")


def test_each_registered_id_builds_its_own_split():
    """``RimsRL/Pickup-<Split>-v0`` draws the distractors of that split: with a distinct count per split,
    the count tells which split an id built."""
    from rims_rl.envs.registration import PICKUP_IDS

    counts = {"train": 1, "known": 2, "novel": 3, "crowded": 4}
    splits = {split: [{"pool": "A", "count": [n, n]}] for split, n in counts.items()}
    assert set(PICKUP_IDS.values()) == set(counts)
    for env_id, split in PICKUP_IDS.items():
        env = gym.make(env_id, splits=splits)
        env.reset(seed=0)
        assert len(env.unwrapped.distractors) == counts[split], env_id


def test_evaluate_counts_a_success_only_for_a_positive_return_and_plays_the_asked_seed(tmp_path, monkeypatch):
    import rims_rl.agents.evaluate as evaluate_module
    from rims_rl.agents.train import resolve_config, train
    from tests.helpers import pairs

    settings = pairs(
        "env.n_envs=2", "ppo.n_steps=16", "ppo.batch_size=32", "ppo.n_epochs=1", "run.progress=false",
        "run.eval_every=0", "total_steps=32", f"run.out={tmp_path}", "run.seed=3",
    )  # fmt: skip
    train(resolve_config("minigrid/pickup.yaml", settings))
    run = tmp_path / "RimsRL-Pickup-v0" / "ppo-rims" / "seed3"
    first = []
    real = evaluate_module.evaluate_policy

    def fixed(model, env, n_eval_episodes, **kwargs):
        first.append(env.reset()["image"].copy())  # the first episode's view: which seed the env plays
        return [0.0, 0.55, 0.0, 0.91], [64, 20, 64, 5]

    monkeypatch.setattr(evaluate_module, "evaluate_policy", fixed)
    result = evaluate_run(run, episodes=4, seed=77)
    assert result["success_rate"] == 0.5  # the failed pickups (return 0) are not successes
    evaluate_run(run, episodes=4, seed=78)
    evaluate_run(run, episodes=4, seed=77)
    monkeypatch.setattr(evaluate_module, "evaluate_policy", real)
    expected = make_env(resolve_config("minigrid/pickup.yaml", settings).env.settings(), 77, True, 4).reset()
    np.testing.assert_array_equal(first[0], expected["image"])  # the asked seed, not the training seed
    np.testing.assert_array_equal(first[2], first[0])
    assert not np.array_equal(first[1], first[0])
