"""Our environment ids under Gymnasium's and SB3's own conventions and checkers."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rims_rl.envs
from rims_rl.envs.classic import KeepObservations
from rims_rl.envs.minigrid import MissionIds
from rims_rl.envs.mujoco import JointNoise, PixelObservation
from rims_rl.envs.registration import (
    CARTPOLE_NO_VELOCITY_ID,
    CHEETAH_PIXELS_ID,
    HOLD_CUE_DISTRACT_ID,
    HOLD_CUE_ID,
    HOLD_CUE_LONG_ID,
    MEMORY_SUITE,
    REPEAT_CARD_ID,
    ids,
)

SMALL_CHEETAH = {"size": 36, "frame_stack": 2, "max_episode_steps": 20}


def make(env_id: str) -> gym.Env:
    return gym.make(env_id, **(SMALL_CHEETAH if env_id == CHEETAH_PIXELS_ID else {}))


def test_every_id_is_made_in_a_fresh_interpreter_both_ways():
    """``import rims_rl.envs`` alone registers every id, and ``gym.make("rims_rl.envs:<id>")`` imports it."""
    script = (
        "import gymnasium as gym\n"
        f"first = gym.make('rims_rl.envs:{CARTPOLE_NO_VELOCITY_ID}')\n"
        "import rims_rl.envs\n"
        "gym.register_envs(rims_rl.envs)\n"
        "from rims_rl.envs.registration import ids\n"
        "for env_id in ids():\n"
        f"    env = gym.make(env_id, **({SMALL_CHEETAH!r} if 'Cheetah' in env_id else {{}}))\n"
        "    env.reset(seed=0)\n"
        "    print(env.spec.id)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == list(ids())


@pytest.mark.parametrize("env_id", ids())
def test_gymnasium_and_sb3_checkers_pass_on_every_id(env_id):
    with warnings.catch_warnings():
        # Every warning fails (the checkers report most defects as warnings) except the advice to check the
        # raw env: the env as made, wrappers included, is what users get.
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*is different from the unwrapped version")
        gymnasium_check_env(make(env_id), skip_render_check=True)
        # SB3 needs arrays in every Dict entry: MiniGrid's text mission goes through MissionIds.
        env = MissionIds(make(env_id), 8) if env_id.startswith("RimsRL/Pickup") else make(env_id)
        sb3_check_env(env)


def test_wrapped_envs_are_recreated_from_their_spec():
    pickup = MissionIds(gym.make("RimsRL/Pickup-Novel-v0"), 5)
    again = gym.make(pickup.spec)
    assert isinstance(again, MissionIds) and again.observation_space["mission"].shape == (5,)
    assert again.spec.id == "RimsRL/Pickup-Novel-v0"
    cheetah = make(CHEETAH_PIXELS_ID)
    wrappers = [spec.name for spec in cheetah.spec.additional_wrappers]
    assert "JointNoise" in wrappers and "PixelObservation" in wrappers
    assert gym.make(cheetah.spec).observation_space == cheetah.observation_space
    noisy = JointNoise(gym.make("HalfCheetah-v5"), 0.3)
    assert gym.make(noisy.spec).std == 0.3
    assert isinstance(PixelObservation, type) and issubclass(PixelObservation, gym.utils.RecordConstructorArgs)


def test_cartpole_without_velocities_shows_positions_only():
    env = gym.make(CARTPOLE_NO_VELOCITY_ID)
    observation, _ = env.reset(seed=3)
    state = np.asarray(env.unwrapped.state)
    np.testing.assert_allclose(observation, state[[0, 2]], rtol=1e-6)
    assert env.observation_space.shape == (2,) and env.spec.max_episode_steps == 500
    with pytest.raises(ValueError, match="keep must list indices"):
        KeepObservations(gym.make("CartPole-v1"), [0, 4])


def test_import_registers_without_loading_the_environments():
    assert rims_rl.envs is not None
    script = "import sys, rims_rl.envs\nprint(sorted(m for m in ('minigrid', 'mujoco') if m in sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def play_repeat_card(lag: int) -> tuple[float, int]:
    """One episode of RepeatCard (3 cards, delay 2, 10 steps) naming the card shown ``lag`` steps ago."""
    env = gym.make(REPEAT_CARD_ID, cards=3, delay=2, length=10)
    observation, _ = env.reset(seed=0)
    shown, total, done = [int(observation.argmax())], 0.0, False
    while not done:
        action = shown[-1 - lag] if len(shown) > lag else 0
        observation, reward, terminated, truncated, _ = env.step(action)
        total += reward
        shown.append(int(observation.argmax()))
        done = terminated or truncated
    return total, len(shown)


def test_repeat_card_scores_recall_of_the_card_shown_delay_steps_ago():
    assert play_repeat_card(lag=2) == (pytest.approx(1.0), 11)
    assert play_repeat_card(lag=1)[0] < 1.0  # the card of one step ago is not what scores
    with pytest.raises(ValueError, match="length must be an integer of at least 3"):
        gym.make(REPEAT_CARD_ID, delay=2, length=2)


def play_hold(env_id: str, answer, seed: int = 0) -> tuple[float, int, list]:
    """One episode of a HoldCue id, answering the recall with ``answer(cue)``; the return, the number of
    actions taken and every observation."""
    env = gym.make(env_id)
    observation, _ = env.reset(seed=seed)
    cue = int(observation[:4].argmax())
    observations, total, actions, done = [observation], 0.0, 0, False
    while not done:
        recall = observations[-1][5] == 1.0
        observation, reward, terminated, truncated, _ = env.step(answer(cue) if recall else 0)
        observations.append(observation)
        total, actions, done = total + reward, actions + 1, terminated or truncated
        assert recall or reward == 0.0  # only the recall step scores
    return total, actions, observations


@pytest.mark.parametrize(("env_id", "hold"), [(HOLD_CUE_ID, 8), (HOLD_CUE_LONG_ID, 32), (HOLD_CUE_DISTRACT_ID, 8)])
def test_hold_cue_scores_only_the_recall_of_the_first_card(env_id, hold):
    for seed in range(10):
        total, actions, observations = play_hold(env_id, lambda cue: cue, seed)
        assert total == 1.0 and actions == hold + 2
        first, middle, recall = observations[0], observations[1 : hold + 1], observations[hold + 1]
        assert first[4] == 1.0 and first[:4].sum() == 1.0 and first[5] == 0.0
        assert recall[5] == 1.0 and recall[:5].sum() == 0.0
        assert all(o[4] == 0.0 and o[5] == 0.0 for o in middle)
        distracted = [o[:4].sum() == 1.0 for o in middle]
        assert all(distracted) if env_id == HOLD_CUE_DISTRACT_ID else not any(distracted)
        assert play_hold(env_id, lambda cue: (cue + 1) % 4, seed)[0] == -1.0
    # Guessing scores (2 - cards) / cards = -0.5 in expectation, the suite's documented random score.
    guesses = [play_hold(env_id, lambda cue: 0, seed)[0] for seed in range(400)]
    assert abs(np.mean(guesses) - MEMORY_SUITE[env_id]["random"]) < 0.15


def test_memory_suite_ids_are_registered_and_say_their_scores():
    """Both checkers run on every id, these included, in test_gymnasium_and_sb3_checkers_pass_on_every_id."""
    assert set(MEMORY_SUITE) <= set(ids())
    for scores in MEMORY_SUITE.values():
        assert scores["random"] < scores["perfect"]
    with pytest.raises(ValueError, match="hold must be an integer of at least 0"):
        gym.make(HOLD_CUE_ID, hold=-1)


def test_suite_tasks_build_through_the_config_path():
    """``make_env`` (what ``rims-rl train --env`` runs) builds every task of the suite: envs that draw nothing
    get no render_mode argument."""
    from rims_rl.envs import make_env

    for env_id in MEMORY_SUITE:
        env = make_env({"id": env_id, "n_envs": 2}, seed=0)
        assert env.num_envs == 2 and env.reset().shape == (2, *gym.make(env_id).observation_space.shape)
        env.close()
