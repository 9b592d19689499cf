"""Atari environments: game names, both backends' preprocessing, and tiny training runs."""

from __future__ import annotations

import numpy as np
import pytest

from rims_rl.agents.algorithms import RecurrentA2C, RimsPPO
from rims_rl.envs import make_env
from rims_rl.envs.atari import ATARI_57, atari_game, make_atari_env

RIMS = {"unit_size": 16, "num_units": 4, "k_active": 2, "input_dropout": 0.0, "comm_dropout": 0.0}


def test_all_57_games_resolve_in_every_common_form():
    assert len(ATARI_57) == 57
    for game in ATARI_57:
        name, rom = atari_game(game)
        assert name == game
        assert atari_game(f"ALE/{game}-v5") == atari_game(f"{game}NoFrameskip-v4") == atari_game(rom) == (name, rom)


def test_unknown_game_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean SpaceInvaders"):
        atari_game("SpaceInvader")
    with pytest.raises(ValueError, match="unknown Atari game 'Tetris2'"):
        atari_game("Tetris2")


@pytest.fixture(scope="module")
def rollouts():
    """200 random-action steps of Pong in both backends, short games (400 frames)."""
    data = {}
    for backend in ("ale", "sb3"):
        env = make_atari_env("Pong", 2, seed=0, backend=backend, max_episode_frames=400)
        first = env.reset().copy()  # SB3's frame stack updates its array in place
        rng = np.random.default_rng(0)
        steps, previous = [], first
        for _ in range(200):
            obs, reward, done, infos = env.step(rng.integers(0, 6, 2))
            steps.append((previous, obs.copy(), reward, done, infos))
            previous = steps[-1][1]
        data[backend] = (env.observation_space, env.action_space, first, steps)
        env.close()
    return data


def test_backends_agree_on_spaces(rollouts):
    ale_obs, ale_act = rollouts["ale"][:2]
    sb3_obs, sb3_act = rollouts["sb3"][:2]
    assert ale_obs == sb3_obs and ale_obs.shape == (4, 84, 84) and ale_obs.dtype == np.uint8
    assert ale_act == sb3_act


@pytest.mark.parametrize("backend", ["ale", "sb3"])
def test_preprocessing_semantics(rollouts, backend):
    _, _, first, steps = rollouts[backend]
    # Reset: only the newest stacked frame is filled.
    assert (first[:, :3] == 0).all() and first[:, 3].any()
    finished = 0
    for previous, obs, reward, done, infos in steps:
        assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}  # clipped for training
        for i in range(2):
            if done[i]:
                finished += 1
                info = infos[i]
                assert info["terminal_observation"].shape == (4, 84, 84)
                assert info["TimeLimit.truncated"]  # 400 frames: Pong cannot end by itself
                assert info["episode"]["l"] > 0 and info["episode"]["r"] <= 0
            else:
                # Frame stacking: the oldest frame drops out, the others shift by one.
                assert np.array_equal(obs[i, :3], previous[i, 1:])
    assert finished >= 2


def test_evaluation_env_scores_unclipped_full_games():
    config = {"id": "Pong", "n_envs": 1, "backend": "ale", "clip_rewards": True, "max_episode_frames": 4000}
    env = make_env(config, seed=0, evaluation=True)
    assert env.clip_rewards is False
    env.close()
    with pytest.raises(ValueError, match="backend='sb3'"):
        make_atari_env("Pong", 1, episodic_life=True)


@pytest.mark.parametrize("algo", [RimsPPO, RecurrentA2C])
@pytest.mark.parametrize("policy", ["RimsCnnPolicy", "LstmCnnPolicy"])
def test_tiny_atari_training_runs(algo, policy):
    env = make_atari_env("Pong", 2, seed=0)
    kwargs = {"rims_kwargs": RIMS} if policy.startswith("Rims") else {"lstm_hidden_size": 64}
    extra = {"n_steps": 32, "batch_size": 32, "n_epochs": 1} if algo is RimsPPO else {}
    model = algo(policy, env, policy_kwargs=kwargs, seed=0, device="cpu", **extra)
    model.learn(128)
    assert model.num_timesteps >= 128
    env.close()
