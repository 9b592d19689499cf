"""HalfCheetah from pixels, joint noise, and the behaviour-cloning pipeline."""

from __future__ import annotations

import copy
import hashlib
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from rims_rl.agents.checkpointing import load_checkpoint, save_checkpoint
from rims_rl.agents.config import ConfigError, CoreConfig
from rims_rl.agents.imitation import (
    STAGES,
    CheetahPolicy,
    _load_policy,
    _stack_index,
    collect,
    load_dataset,
    load_imitation_config,
    random_shift,
    run,
    train_bc,
)
from rims_rl.envs.mujoco import make_cheetah, render_frame
from tests.helpers import assert_one_line_error, cli, cli_here, pairs

TINY = [
    "expert.algo=ppo", "expert.normalize=true", "expert.total_steps=512", "expert.ppo.n_steps=256",
    "expert.eval_episodes=1", "collect.episodes=2",
    "env.max_episode_steps=40", "bc.epochs=2", "bc.window=16", "bc.batch_size=4", "bc.checkpoint_every=1",
    "evaluate.episodes=1", "evaluate.seeds=[0]", "run.progress=false",
]  # fmt: skip


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny expert and dataset, shared by the tests that need one."""
    out = tmp_path_factory.mktemp("imitation")
    config = load_imitation_config("mujoco/halfcheetah.yaml", pairs(*TINY))
    run(config, out, stages=("expert", "collect"), log=quiet)
    return config, out


def test_frames_are_not_blank_and_follow_the_state():
    env = make_cheetah(size=32, frame_stack=2)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6, 32, 32) and obs.dtype == np.uint8
    assert obs.std() > 10  # not a blank image
    np.testing.assert_array_equal(obs[:3], obs[3:])  # the stack starts with the reset frame twice
    for _ in range(10):
        obs, *_ = env.step(np.ones(6, dtype=np.float32))
    assert (obs[:3] != obs[3:]).mean() > 0.01  # consecutive frames differ while moving
    base = env.unwrapped
    before = render_frame(env)
    qpos = base.data.qpos.copy()
    qpos[2] += 1.0  # pitch the body
    base.set_state(qpos, base.data.qvel.copy())
    assert (render_frame(env) != before).mean() > 0.05
    env.close()


@pytest.mark.parametrize("pixels", [False, True])
def test_joint_noise_perturbs_the_state_and_zero_does_not(pixels):
    def states(std):
        env = make_cheetah(pixels=pixels, size=32, joint_noise=std)
        obs, _ = env.reset(seed=3)
        observations, qpos = [obs], []
        for step in range(15):
            obs, *_ = env.step(np.full(6, 0.3 * np.sin(step), dtype=np.float32))
            observations.append(obs)
            qpos.append(env.unwrapped.data.qpos.copy())
        env.close()
        return np.stack(observations), np.stack(qpos)

    plain = states(0.0)
    np.testing.assert_array_equal(plain[1], states(0.0)[1])  # deterministic, and zero std is a no-op
    noisy = states(0.1)
    assert np.abs(noisy[1][:, 3:] - plain[1][:, 3:]).mean() > 0.01  # actuated joints moved
    assert not np.array_equal(noisy[0], plain[0])  # and the observation shows it
    np.testing.assert_array_equal(noisy[1], states(0.1)[1])  # the noise is seeded by reset
    with pytest.raises(ValueError, match="non-negative"):
        make_cheetah(pixels=pixels, joint_noise=-1.0)


def test_stack_index_repeats_the_first_frame_of_each_episode():
    starts = np.array([True, False, False, True, False])
    assert _stack_index(starts, 3).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [3, 3, 3], [3, 3, 4]]


def test_random_shift_moves_each_window_alike_at_every_step():
    rng = np.random.default_rng(0)
    batch = torch.randint(0, 256, (5, 8, 6, 16, 16), dtype=torch.uint8)
    shifted = random_shift(batch, 3, rng)
    assert shifted.shape == batch.shape and shifted.dtype == torch.uint8
    moved = 0
    for window in range(8):
        # Find this window's shift from step 0, then check every step used the same one.
        padded = torch.nn.functional.pad(batch[:, window].float(), (3, 3, 3, 3), mode="replicate")
        offsets = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if torch.equal(padded[0, :, dy : dy + 16, dx : dx + 16], shifted[0, window].float())
        ]
        assert len(offsets) == 1
        dy, dx = offsets[0]
        assert torch.equal(padded[:, :, dy : dy + 16, dx : dx + 16], shifted[:, window].float())
        moved += (dy, dx) != (3, 3)
    assert moved > 0


def test_dataset_round_trip_and_corruption(pipeline):
    config, out = pipeline
    data, meta = load_dataset(out)
    assert meta["episodes"] == 2 and meta["steps"] == len(data["frames"]) == 80
    assert data["frames"].shape == (80, 3, 64, 64) and data["frames"].dtype == np.uint8
    assert data["actions"].shape == (80, 6) and np.abs(data["actions"]).max() <= 1.0
    assert data["episode_starts"].nonzero()[0].tolist() == [0, 40]
    assert meta["demo_return"] == pytest.approx(data["rewards"].sum() / 2, rel=1e-4)
    assert meta["expert_return"] == pytest.approx(
        json.loads((out / "expert" / "expert.json").read_text())["return_mean"]
    )
    assert collect(config, out, log=quiet) == meta  # a valid dataset is kept

    corrupt = out.parent / "corrupt"
    corrupt.mkdir()
    raw = bytearray((out / "dataset.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (corrupt / "dataset.npz").write_bytes(bytes(raw))
    (corrupt / "dataset.json").write_text((out / "dataset.json").read_text())
    with pytest.raises(ConfigError, match="corrupt"):
        load_dataset(corrupt)
    with pytest.raises(ConfigError, match="corrupt"):
        collect(config, corrupt, log=quiet)  # refuses, and leaves the file as it was
    assert (corrupt / "dataset.npz").read_bytes() == bytes(raw)

    # A dataset whose checksum matches but which lacks an array is refused in one line.
    partial = out.parent / "partial"
    partial.mkdir()
    np.savez(partial / "dataset.npz", actions=data["actions"], rewards=data["rewards"])
    digest = hashlib.sha256((partial / "dataset.npz").read_bytes()).hexdigest()
    (partial / "dataset.json").write_text(json.dumps({**meta, "sha256": digest}))
    with pytest.raises(ConfigError, match="lacks episode_starts, frames"):
        load_dataset(partial)


def test_action_noise_is_executed_but_the_expert_action_is_recorded(pipeline):
    _, out = pipeline
    recorded = {}
    for noise in (0.0, 0.5):
        folder = out.parent / f"noise{noise}"
        folder.mkdir()
        (folder / "expert").symlink_to(out / "expert")
        noisy = load_imitation_config("mujoco/halfcheetah.yaml", pairs(*TINY, f"collect.action_noise={noise}"))
        collect(noisy, folder, log=quiet)
        recorded[noise] = load_dataset(folder)[0]
    clean, noisy = recorded[0.0], recorded[0.5]
    # Same reset state, so the expert's first action is the same; the executed one was not.
    np.testing.assert_array_equal(noisy["actions"][0], clean["actions"][0])
    assert noisy["rewards"][0] != clean["rewards"][0]
    assert not np.array_equal(noisy["frames"][5], clean["frames"][5])  # the noise moved the cheetah


def test_bc_learns_checkpoints_and_resumes(pipeline, tmp_path, monkeypatch):
    from rims_rl.agents import imitation

    config, out = pipeline
    info = train_bc(config, out, "rims_k3", log=quiet)
    assert info["epochs"] == 2 and np.isfinite(info["final_loss"])
    final = load_checkpoint(out / "bc" / "rims_k3" / "checkpoint.pt", "bc")
    assert final["finished"] and final["epoch"] == 2
    messages = []
    assert train_bc(config, out, "rims_k3", log=messages.append) == info and messages == ["bc rims_k3: done already"]

    # The same training in another folder, stopped by a crash after its epoch-1 checkpoint
    # (bc.checkpoint_every is 1): the rerun resumes there and ends with the same weights.
    for name in ("dataset.npz", "dataset.json"):
        (tmp_path / name).symlink_to(out / name)
    saves = []

    def crash_after_one(*args, **kwargs):
        if saves:
            raise RuntimeError("stopped")
        saves.append(args)
        save_checkpoint(*args, **kwargs)

    monkeypatch.setattr(imitation, "save_checkpoint", crash_after_one)
    with pytest.raises(RuntimeError, match="stopped"):
        train_bc(config, tmp_path, "rims_k3", log=quiet)
    monkeypatch.undo()
    again = train_bc(config, tmp_path, "rims_k3", log=messages.append)
    assert any("resuming at epoch 1" in m for m in messages)
    assert again["final_loss"] == info["final_loss"]
    resumed = load_checkpoint(tmp_path / "bc" / "rims_k3" / "checkpoint.pt", "bc")
    for key, value in final["policy"].items():
        torch.testing.assert_close(resumed["policy"][key], value, rtol=0, atol=0)


def test_bc_lowers_the_imitation_loss(pipeline):
    """Behaviour cloning moves the policy towards the expert: its loss on the demonstrations falls
    below that of the same policy before training (same seed, so the same initial weights)."""
    config, out = pipeline
    config = copy.deepcopy(config)
    config.bc.epochs = 12
    config.bc.models = {"probe": CoreConfig("lstm", {"hidden_size": 32})}
    train_bc(config, out, "probe", log=quiet)
    trained = _load_policy(config, out, "probe")
    torch.manual_seed(config.run.seed)
    env = config.env
    untrained = CheetahPolicy(3 * env.frame_stack, env.size, 6, config.bc.models["probe"], config.bc.features)
    data, _ = load_dataset(out)
    stacks = torch.as_tensor(_stack_index(data["episode_starts"], env.frame_stack))
    steps = torch.arange(32)[:, None] + torch.tensor([0, 40])[None, :]  # the first 32 steps of both episodes
    frames = torch.as_tensor(data["frames"])[stacks[steps]].flatten(2, 3)
    actions = torch.as_tensor(data["actions"])[steps]
    with torch.no_grad():
        losses = [
            torch.nn.functional.mse_loss(policy.eval()(frames)[0], actions).item() for policy in (untrained, trained)
        ]
    assert losses[1] < 0.8 * losses[0], losses


def test_pipeline_end_to_end_through_the_cli(tmp_path):
    args = ["imitation", "run", "--out", str(tmp_path)]
    for item in TINY:
        args += ["--set", item]
    result = cli(*args, timeout=600)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "results.md").read_text()
    for name in ("rims_k3", "rims_k6", "lstm"):
        assert f"| {name} |" in table
    assert "noise 0.1" in table
    # The same episode seeds with and without joint noise: the noise changes every model's returns.
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for name, row in results.items():
        assert row["noise 0.1"]["returns"] != row["no noise"]["returns"], name
    again = cli(*args, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already") == 1 + 1 + 3
    assert set(STAGES) == {"expert", "collect", "bc", "evaluate"}


def test_bad_imitation_config_fails_in_one_line(tmp_path):
    result = cli_here("imitation", "bc", "--out", str(tmp_path), "--set", "bc.models.gru={core: gru}")
    assert_one_line_error(result, "bc.models.gru.core must be one of rims, lstm")
    result = cli_here("imitation", "bc", "--out", str(tmp_path), "--set", "bc.models.rims_k3.k_active=9")
    assert_one_line_error(result, "k_active")
    result = cli_here("imitation", "bc", "--out", str(tmp_path))
    assert_one_line_error(result, "no dataset")
    result = cli_here("imitation", "expert", "--out", str(tmp_path), "--set", "expert.algo=td3")
    assert_one_line_error(result, "expert.algo must be one of ppo, sac")
    assert not (tmp_path / "expert").exists()


def test_sac_expert_is_trained_saved_and_replayed(tmp_path):
    """``expert.algo: sac`` trains SB3's SAC with the config's settings, and collection loads it by
    the same key (loading a SAC file as PPO would fail)."""
    overrides = [*TINY, "expert.algo=sac", "expert.total_steps=200", "expert.sac.learning_starts=100"]
    overrides += ["expert.sac.batch_size=32", "expert.sac.buffer_size=1000", "expert.normalize=false"]
    config = load_imitation_config("mujoco/halfcheetah.yaml", pairs(*overrides))
    run(config, tmp_path, stages=("expert", "collect"), log=quiet)
    info = json.loads((tmp_path / "expert" / "expert.json").read_text())
    assert info["algo"] == "sac"
    from stable_baselines3 import SAC

    model = SAC.load(tmp_path / "expert" / "model.zip", device="cpu")
    assert model.batch_size == 32 and model.learning_starts == 100
    _, meta = load_dataset(tmp_path)
    assert meta["expert_return"] == pytest.approx(info["return_mean"])
    assert not (tmp_path / "expert" / "vecnormalize.pkl").exists()


@pytest.mark.parametrize(
    "algo_overrides",
    [
        [
            "expert.algo=sac",
            "expert.sac.learning_starts=100",
            "expert.sac.batch_size=32",
            "expert.sac.buffer_size=1000",
            "expert.normalize=false",
        ],
        ["expert.algo=ppo", "expert.ppo.n_steps=100", "expert.ppo.batch_size=50", "expert.normalize=true"],
    ],
    ids=["sac", "ppo-normalized"],
)
def test_expert_crash_resumes_from_its_checkpoint(tmp_path, monkeypatch, algo_overrides):
    """A crash after training (here: in the expert's evaluation) loses nothing: the checkpoint holds the
    model, the step counter, SAC's replay buffer and the normalizer's statistics, and the same command
    continues from them up to a raised total."""
    from rims_rl.agents import imitation

    overrides = [*TINY, *algo_overrides, "expert.checkpoint_every=100"]
    config = load_imitation_config("mujoco/halfcheetah.yaml", pairs(*overrides, "expert.total_steps=200"))

    def crash(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(imitation, "_expert_episodes", crash)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        imitation.expert(config, tmp_path, log=quiet)
    monkeypatch.undo()
    first = load_checkpoint(tmp_path / "expert" / "checkpoint.pt", "expert")
    assert first["num_timesteps"] == 200
    assert not (tmp_path / "expert" / "expert.json").exists()
    # The same folder with the other algorithm is refused in one line before anything starts.
    other = "ppo" if "expert.algo=sac" in algo_overrides else "sac"
    mismatched = load_imitation_config("mujoco/halfcheetah.yaml", pairs(*overrides, f"expert.algo={other}"))
    with pytest.raises(ConfigError, match=f"holds a {first['algorithm']} expert but expert.algo is {other}"):
        imitation.expert(mismatched, tmp_path, log=quiet)
    assert load_checkpoint(tmp_path / "expert" / "checkpoint.pt", "expert")["num_timesteps"] == 200

    messages: list[str] = []
    config = load_imitation_config("mujoco/halfcheetah.yaml", pairs(*overrides, "expert.total_steps=300"))
    monkeypatch.setattr(imitation, "_expert_episodes", crash)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        imitation.expert(config, tmp_path, log=messages.append)
    monkeypatch.undo()
    assert any("resuming" in message and "step 200 of 300" in message for message in messages)
    last = load_checkpoint(tmp_path / "expert" / "checkpoint.pt", "expert")
    assert last["num_timesteps"] == 300
    if "expert.algo=sac" in algo_overrides:
        before, after = first["replay"], last["replay"]
        assert before["pos"] == 200 and after["pos"] == 300
        torch.testing.assert_close(after["arrays"]["observations"][:200], before["arrays"]["observations"])
        assert "normalizer" not in first
    else:
        before, after = (saved["normalizer"]["obs"]["count"] for saved in (first, last))
        assert after >= before + 100  # the statistics went on (a restart would hold about 100)
        assert load_checkpoint(tmp_path / "expert" / "expert.pt", "expert-policy")["normalizer"] is not None
    messages.clear()
    imitation.expert(config, tmp_path, log=messages.append)  # nothing left to train: saved and evaluated
    assert any("step 300 of 300" in message for message in messages)
    assert json.loads((tmp_path / "expert" / "expert.json").read_text())["steps"] == 300
    assert not (tmp_path / "expert" / "checkpoint.pt").exists()


def test_bad_expert_checkpoint_every_is_refused():
    with pytest.raises(ConfigError, match=r"expert\.checkpoint_every"):
        load_imitation_config("mujoco/halfcheetah.yaml", [("expert.checkpoint_every", -1)])


def test_evaluation_carries_the_recurrent_state_from_step_to_step():
    """``play`` hands the policy, at every step, the state it returned at the step before (None at the first):
    a recurrent policy evaluated without its memory would be scored on another task."""
    from rims_rl.agents.imitation import play

    class Recorder:
        def __init__(self) -> None:
            self.seen = []

        def __call__(self, obs, state):
            self.seen.append(state)
            return torch.zeros(1, 1, 6), ("state after step", len(self.seen))

    class FiveSteps(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (3, 4, 4), np.uint8)
        action_space = gym.spaces.Box(-1, 1, (6,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return self.observation_space.sample(), {}

        def step(self, action):
            self.t += 1
            return self.observation_space.sample(), 1.0, self.t >= 5, False, {}

    policy = Recorder()
    assert play(policy, FiveSteps(), seed=0) == 5.0
    assert policy.seen == [None, *[("state after step", step) for step in range(1, 5)]]
