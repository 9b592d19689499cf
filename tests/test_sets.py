"""Input sets: the set extractors, and RIMs policies that read rows where an LSTM reads them flattened."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN

from rims_rl.agents.algorithms import RecurrentA2C, RimsPPO
from rims_rl.envs.minigrid import MissionIds, make_pickup_env
from rims_rl.extractors import ImageSetExtractor, MiniGridExtractor, MiniGridSetExtractor, set_extractor_for
from rims_rl.policies import LstmMultiInputPolicy, LstmPolicy, RimsCnnPolicy, RimsMultiInputPolicy, RimsPolicy
from tests.test_contract import TinyImages
from tests.test_policies import assert_training_matches_collection, collect

RIMS = {"unit_size": 8, "num_units": 4, "k_active": 2}


class _Mine(BaseFeaturesExtractor):
    """A user's own extractor: features="set" must not replace it."""


class SmallImages(TinyImages):
    """44 x 44 frames: the Nature CNN's last map is 2 x 2, a set of 4 rows."""

    observation_space = gym.spaces.Box(0, 255, (1, 44, 44), np.uint8)


def pickup_space():
    return MissionIds(make_pickup_env("train"), mission_length=8).observation_space


def pickup_obs(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    env = MissionIds(make_pickup_env("train"), mission_length=8)
    observations = [env.reset(seed=seed + i)[0] for i in range(batch)]
    return {key: torch.as_tensor(np.stack([o[key] for o in observations])) for key in ("image", "mission")}


def test_minigrid_rows_each_see_one_cell_and_the_mission_its_own_row():
    extractor = MiniGridSetExtractor(pickup_space(), row_size=16)
    assert (extractor.set_size, extractor.row_size, extractor.features_dim) == (50, 16, 800)
    obs = pickup_obs()
    rows = extractor.rows(extractor(obs))
    assert rows.shape == (3, 50, 16)
    # One cell changed: its row alone changes.
    changed = {key: value.clone() for key, value in obs.items()}
    cell = 17
    changed["image"].view(3, 49, 3)[0, cell] = torch.tensor([6, 0, 0])  # a red ball
    other = extractor.rows(extractor(changed))
    moved = (other[0] - rows[0]).abs().sum(-1) > 0
    assert moved.nonzero().flatten().tolist() == [cell]
    # The mission changed: the last row alone changes.
    changed = {key: value.clone() for key, value in obs.items()}
    changed["mission"][0, 3] = (changed["mission"][0, 3] % 40) + 2
    moved = (extractor.rows(extractor(changed))[0] - rows[0]).abs().sum(-1) > 0
    assert moved.nonzero().flatten().tolist() == [49]
    # The same object in two places gives two rows: a row knows where it is.
    same = {key: value.clone() for key, value in obs.items()}
    same["image"].view(3, 49, 3)[0, :] = torch.tensor([6, 0, 0])
    rows = extractor.rows(extractor(same))[0, :49]
    assert torch.cdist(rows, rows).fill_diagonal_(1.0).min() > 0


def test_image_rows_are_the_cnn_map_positions_with_their_coordinates():
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    extractor = ImageSetExtractor(space)
    assert (extractor.set_size, extractor.row_size) == (49, 66)
    images = torch.rand(2, 4, 84, 84)
    rows = extractor.rows(extractor(images))
    maps = extractor.cnn(images)  # (2, 64, 7, 7)
    torch.testing.assert_close(rows[:, 7 * 2 + 5, :64], maps[:, :, 2, 5])  # row y * 7 + x
    torch.testing.assert_close(rows[0, 7 * 2 + 5, 64:], torch.tensor([5 / 3 - 1, 2 / 3 - 1]))
    assert torch.equal(rows[0, :, 64:], rows[1, :, 64:])


def test_set_switch_maps_extractors_and_refuses_what_gives_no_rows():
    images = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert set_extractor_for(NatureCNN, images) is ImageSetExtractor
    assert set_extractor_for(MiniGridExtractor, pickup_space()) is MiniGridSetExtractor
    assert set_extractor_for(CombinedExtractor, pickup_space()) is MiniGridSetExtractor
    assert set_extractor_for(MiniGridSetExtractor, pickup_space()) is MiniGridSetExtractor
    with pytest.raises(ValueError, match="features='set' needs observations that give rows"):
        RecurrentPPO(RimsPolicy, "CartPole-v1", policy_kwargs={"features": "set"})
    with pytest.raises(ValueError, match="would replace the features extractor _Mine"):
        set_extractor_for(_Mine, images)
    with pytest.raises(ValueError, match="features must be one of vector, set"):
        RecurrentPPO(RimsPolicy, "CartPole-v1", policy_kwargs={"features": "rows"})
    env = make_vec_env(TinyImages, n_envs=1)
    with pytest.raises(ValueError, match="use features='set'"):
        RecurrentPPO(
            RimsCnnPolicy, env, policy_kwargs={"features": "vector", "features_extractor_class": ImageSetExtractor}
        )


def pickup_env(n_envs: int = 2):
    return make_vec_env(lambda: MissionIds(make_pickup_env("train", max_steps=16), mission_length=8), n_envs=n_envs)


def test_rims_reads_the_rows_and_the_lstm_reads_them_flattened():
    rims = RecurrentPPO(RimsMultiInputPolicy, pickup_env(), policy_kwargs={"features": "set", "rims_kwargs": RIMS})
    lstm = RecurrentPPO(LstmMultiInputPolicy, pickup_env(), policy_kwargs={"features": "set", "lstm_hidden_size": 16})
    for model in (rims, lstm):
        assert isinstance(model.policy.features_extractor, MiniGridSetExtractor)
        assert model.policy.features == "set"
    assert rims.policy.core_rows == 50 and rims.policy.lstm_actor.input_size == 32
    assert lstm.policy.core_rows is None and lstm.policy.lstm_actor.input_size == 50 * 32
    # The RIMs core gets the 50 rows: its input attention has 51 entries (the null row first) per head.
    seen = []
    core = rims.policy.lstm_actor
    core.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    rims.learn(64)
    assert seen and all(shape[2:] == (50, 32) for shape in seen)
    x = rims.policy.features_extractor(pickup_obs(2)).view(1, 2, 50, 32)
    _, _, details = core.forward_with_details(x)
    assert details.input_attention.shape == (1, 2, 4, 4, 51)


@pytest.mark.parametrize("algorithm", [RecurrentPPO, RecurrentA2C])
@pytest.mark.parametrize("policy", [RimsMultiInputPolicy, LstmMultiInputPolicy])
def test_set_policies_train_act_and_reload_with_the_switch_alone(algorithm, policy, tmp_path):
    model = algorithm(policy, pickup_env(), n_steps=16, policy_kwargs={"features": "set"}, seed=0)
    model.learn(64)
    env = model.get_env()
    obs = env.reset()
    starts = np.ones(env.num_envs, dtype=bool)
    action, state = model.predict(obs, episode_start=starts, deterministic=True)
    model.save(tmp_path / "model.zip")
    loaded = algorithm.load(tmp_path / "model.zip", env=env)
    assert loaded.policy.features == "set" and isinstance(loaded.policy.features_extractor, MiniGridSetExtractor)
    again, again_state = loaded.predict(obs, episode_start=starts, deterministic=True)
    np.testing.assert_array_equal(action, again)
    np.testing.assert_allclose(state[0], again_state[0], rtol=0, atol=1e-6)


def test_image_set_policy_training_path_reproduces_collection():
    """Padded training sequences of a set policy give the log-probabilities and values seen while acting."""
    model = RimsPPO(
        RimsCnnPolicy,
        make_vec_env(SmallImages, n_envs=2, seed=0),
        n_steps=16,
        batch_size=32,
        policy_kwargs={"features": "set", "rims_kwargs": RIMS, "critic_core": "separate"},
        seed=0,
    )
    assert model.policy.core_rows == 4 and model.policy.lstm_actor.input_size == 66  # a 2x2 map
    collect(model)
    assert model.rollout_buffer.episode_starts[1:].any()  # episodes end inside the rollout
    assert_training_matches_collection(model, 32)


def test_vector_policy_defaults_are_unchanged():
    policy = LstmPolicy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), lambda _: 1e-3)
    assert policy.features == "vector" and policy.core_rows is None


def test_minigrid_grid_is_the_agents_point_of_view():
    """``as_grid`` lays the cell rows out as MiniGrid draws its point of view: the agent's cell at the bottom
    centre, what is ahead above it."""
    env = MissionIds(make_pickup_env("train"), mission_length=8)
    extractor = MiniGridSetExtractor(env.observation_space)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        per_row = torch.as_tensor(np.append(obs["image"].reshape(49, 3)[:, 0], 0))  # object codes, then the mission
        view = env.unwrapped.gen_obs()["image"][:, :, 0]  # MiniGrid's (x, y) grid of object codes
        np.testing.assert_array_equal(extractor.as_grid(per_row).numpy(), view.T)
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    image = ImageSetExtractor(space)
    rows = image.rows(image(torch.rand(1, 4, 84, 84)))[0]
    x, y = image.as_grid(rows[:, 64]), image.as_grid(rows[:, 65])
    assert (x.diff(dim=1) > 0).all() and (y.diff(dim=0) > 0).all()  # x grows to the right, y downwards


def test_visualize_draws_where_each_unit_looks(tmp_path):
    from rims_rl.agents.train import resolve_config, train
    from rims_rl.agents.visualize import visualize_run
    from tests.helpers import pairs

    settings = pairs(
        "policy_kwargs.features=set", "env.n_envs=2", "ppo.n_steps=16", "ppo.batch_size=32", "ppo.n_epochs=1",
        "run.progress=false", "run.eval_every=0", "total_steps=32", f"run.out={tmp_path}",
    )  # fmt: skip
    train(resolve_config("minigrid/pickup.yaml", settings))
    run = tmp_path / "RimsRL-Pickup-v0" / "ppo-rims" / "seed0"
    result = visualize_run(run, distractors="novel")
    assert result["steps"] > 0 and (run / "visualize" / "episode.gif").stat().st_size > 0
    assert (run / "visualize" / "attention.png").stat().st_size > 0 and (run / "visualize" / "activations.png").exists()
    # A one-row RIMs policy draws activations but no attention over a view.
    train(resolve_config("minigrid/pickup.yaml", [*settings[1:], ("run.label", "vector")]))
    result = visualize_run(tmp_path / "RimsRL-Pickup-v0" / "vector" / "seed0")
    assert "png" in result and "attention_png" not in result
