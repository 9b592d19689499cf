"""RIMs and LSTM policies inside sb3-contrib's RecurrentPPO, and recurrent A2C."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.env_util import make_vec_env

from rims_rl.agents.algorithms import RecurrentA2C, RimsPPO
from rims_rl.cores import LSTMCore
from rims_rl.policies import LstmCnnPolicy, LstmPolicy, RimsCnnPolicy, RimsPolicy
from rims_rl.rims import RIMs

RIMS = {"unit_size": 8, "num_units": 4, "k_active": 2, "input_dropout": 0.0, "comm_dropout": 0.0}
POLICIES = {"rims": ("RimsPolicy", {"rims_kwargs": RIMS}), "lstm": ("LstmPolicy", {"lstm_hidden_size": 32})}


def cartpole(n_envs: int = 3, seed: int = 0):
    return make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed)


def ppo(policy: str = "rims", critic_core: str = "shared", **kwargs) -> RimsPPO:
    name, policy_kwargs = POLICIES[policy]
    settings = dict(n_steps=32, batch_size=48, n_epochs=2, seed=0, device="cpu")
    settings.update(kwargs)
    return RimsPPO(name, cartpole(), policy_kwargs={**policy_kwargs, "critic_core": critic_core}, **settings)


def assert_training_matches_collection(model, batch_size: int) -> None:
    """The rollout re-evaluated in padded training sequences gives the log-probabilities and values seen
    while acting."""
    for batch in model.rollout_buffer.get(batch_size):
        with torch.no_grad():
            values, log_prob, _ = model.policy.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
            )
        mask = batch.mask > 0
        torch.testing.assert_close(log_prob[mask], batch.old_log_prob[mask], rtol=0, atol=1e-5)
        torch.testing.assert_close(values.flatten()[mask], batch.old_values[mask], rtol=0, atol=1e-5)


def collect(model) -> None:
    """One rollout into model.rollout_buffer, without training."""
    _, callback = model._setup_learn(10_000, None)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


@pytest.mark.parametrize("policy", ["rims", "lstm"])
@pytest.mark.parametrize("critic_core", ["shared", "separate", "none"])
def test_core_is_ours_and_optimizer_covers_every_parameter(policy, critic_core):
    model = ppo(policy, critic_core)
    core_type = RIMs if policy == "rims" else LSTMCore
    assert isinstance(model.policy.lstm_actor, core_type)
    assert isinstance(model.policy.lstm_critic, core_type) == (critic_core == "separate")
    in_optimizer = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in model.policy.parameters())
    assert len(in_optimizer) == len(list(model.policy.parameters()))  # nothing stale (the discarded nn.LSTM)
    # sb3-contrib sizes its state buffers from the core: (n_steps, 1, n_envs, output width).
    width = 32
    assert model.rollout_buffer.hidden_states_pi.shape == (32, 1, 3, width)


def test_adam_runs_fused_unless_the_options_choose_and_is_saved_as_given(tmp_path):
    """Adam is fused by default (same steps as SB3's per-tensor loop up to rounding); an explicit
    foreach or fused choice wins; the saved policy keeps the user's optimizer_kwargs as given."""
    model = ppo("rims")
    assert model.policy.optimizer.defaults["fused"] is True
    assert model.policy.optimizer_kwargs == {"eps": 1e-5}  # SB3's Adam default, not rewritten
    name, policy_kwargs = POLICIES["rims"]
    chosen = RimsPPO(name, cartpole(), policy_kwargs={**policy_kwargs, "optimizer_kwargs": {"foreach": False}})
    assert not chosen.policy.optimizer.defaults["fused"] and chosen.policy.optimizer.defaults["foreach"] is False
    # One fused step against the per-tensor loop from the same gradients.
    policy = model.policy
    looped = torch.optim.Adam(copy.deepcopy(policy).parameters(), lr=1e-3, eps=1e-5, foreach=False)
    for group in policy.optimizer.param_groups:
        group["lr"] = 1e-3
    for fused_param, loop_param in zip(policy.parameters(), looped.param_groups[0]["params"], strict=True):
        fused_param.grad = torch.randn_like(fused_param)
        loop_param.grad = fused_param.grad.clone()
    policy.optimizer.step()
    looped.step()
    for fused_param, loop_param in zip(policy.parameters(), looped.param_groups[0]["params"], strict=True):
        torch.testing.assert_close(fused_param, loop_param, rtol=1e-5, atol=1e-6)
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = RimsPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.optimizer.defaults["fused"] is True and loaded.policy.optimizer_kwargs == {"eps": 1e-5}


def test_bad_policy_settings_fail_clearly():
    with pytest.raises(ValueError, match="k_active"):
        ppo(policy="rims").__class__("RimsPolicy", cartpole(), policy_kwargs={"rims_kwargs": {**RIMS, "k_active": 9}})
    with pytest.raises(ValueError, match="critic_core"):
        ppo(critic_core="both")
    with pytest.raises(ValueError, match="n_lstm_layers"):
        RimsPPO("LstmPolicy", cartpole(), policy_kwargs={"n_lstm_layers": 2})


@pytest.mark.parametrize("critic_core", ["shared", "separate"])
def test_ppo_loss_gradients_reach_every_rims_parameter_group(critic_core):
    """The authors' Atari code fed CNN features, not RIMs, to the heads: prove ours trains RIMs."""
    model = ppo("rims", critic_core)
    grads = {}
    optimizer_step = model.policy.optimizer.step

    def record_then_step(*args, **kwargs):
        if not grads:
            for name, parameter in model.policy.named_parameters():
                grads[name] = None if parameter.grad is None else parameter.grad.abs().sum().item()
        return optimizer_step(*args, **kwargs)

    model.policy.optimizer.step = record_then_step
    model.learn(96)
    cores = ["lstm_actor"] + (["lstm_critic"] if critic_core == "separate" else [])
    for core in cores:
        for group in ("input_key", "input_value", "input_query", "weight_ih", "weight_hh", "comm_qkv", "comm_output"):
            assert grads[f"{core}.{group}"], f"no PPO gradient reaches {core}.{group}"
    assert grads["action_net.weight"] and grads["value_net.weight"]


def test_shared_core_is_trained_by_the_value_loss_too():
    """sb3-contrib's shared_lstm detaches the critic; our shared core takes the value gradient."""
    model = ppo("rims", "shared")
    collect(model)
    batch = next(model.rollout_buffer.get(None))
    values, _, _ = model.policy.evaluate_actions(
        batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
    )
    values.sum().backward()
    assert model.policy.lstm_actor.weight_hh.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", ["rims", "lstm"])
@pytest.mark.parametrize("critic_core", ["shared", "separate"])
def test_training_path_reproduces_collection(policy, critic_core):
    """Re-evaluating a rollout in padded training sequences (stored states, resets at episode
    starts) gives the log-probabilities and values seen while acting one step at a time."""
    model = ppo(policy, critic_core, n_steps=64, batch_size=64)
    collect(model)
    assert model.rollout_buffer.episode_starts[1:].any()  # episodes end inside the rollout
    assert_training_matches_collection(model, 64)


@pytest.mark.parametrize("policy", ["rims", "lstm"])
@pytest.mark.parametrize("critic_core", ["shared", "separate"])
def test_a_reset_inside_a_sequence_restarts_the_state_as_acting_does(policy, critic_core):
    """Whole sequences in one call with episode starts in their middle (a user's own sequences, or a
    buffer that does not split at episode starts) give, at every step, the log-probabilities, values
    and final states of acting one step at a time with the state zeroed at those starts."""
    model = ppo(policy, critic_core)
    p = model.policy
    torch.manual_seed(0)
    n_seq, steps = 3, 12
    obs = torch.randn(n_seq, steps, 4)
    actions = torch.randint(0, 2, (n_seq, steps))
    starts = torch.zeros(n_seq, steps)
    starts[0, 5] = starts[1, 0] = starts[1, 9] = starts[2, 11] = 1.0
    width = p.lstm_actor.hidden_size

    def random_state():
        return (torch.randn(1, n_seq, width), torch.randn(1, n_seq, width))

    initial = RNNStates(random_state(), random_state())
    with torch.no_grad():
        values, log_prob, _ = p.evaluate_actions(obs.flatten(0, 1), actions.flatten(), initial, starts.flatten())
        state, stepped = initial, []
        for t in range(steps):
            distribution, _ = p.get_distribution(obs[:, t], state.pi, starts[:, t])
            _, value, _, state = p.forward(obs[:, t], state, starts[:, t])
            stepped.append((value.flatten(), distribution.log_prob(actions[:, t])))
    step_values = torch.stack([v for v, _ in stepped], dim=1).flatten()
    step_log_prob = torch.stack([lp for _, lp in stepped], dim=1).flatten()
    torch.testing.assert_close(values.flatten(), step_values, rtol=0, atol=1e-5)
    torch.testing.assert_close(log_prob, step_log_prob, rtol=0, atol=1e-5)
    # The reset matters: without it the later steps differ.
    with torch.no_grad():
        carried, _, _ = p.evaluate_actions(obs.flatten(0, 1), actions.flatten(), initial, torch.zeros(n_seq * steps))
    assert not torch.allclose(carried.view(n_seq, steps)[0, 5:], values.view(n_seq, steps)[0, 5:])


@pytest.mark.parametrize("critic_core", ["shared", "separate"])
def test_unpadded_minibatches_match_padded_ones(critic_core):
    """Our buffer sends only the real observations (the features extractor skips the sequence
    padding); outputs at real slots and every gradient equal those of sb3-contrib's padded batch."""
    model = ppo("rims", critic_core, n_steps=64, batch_size=64)
    collect(model)
    buffer = model.rollout_buffer
    stock = RecurrentRolloutBuffer.__new__(RecurrentRolloutBuffer)
    stock.__dict__ = buffer.__dict__  # same data, sb3-contrib's sampling
    next(buffer.get(64))  # flattens the buffer in place
    env_change = np.zeros((buffer.buffer_size, buffer.n_envs))
    env_change[0] = 1.0
    env_change = buffer.swap_and_flatten(env_change)
    checked = 0
    for batch_inds in np.array_split(np.arange(buffer.buffer_size * buffer.n_envs), 3):
        ours = buffer._get_samples(batch_inds, env_change)
        theirs = RecurrentRolloutBuffer._get_samples(stock, batch_inds, env_change)
        assert ours.observations.shape[0] == len(batch_inds) < theirs.observations.shape[0]
        results = []
        for batch in (ours, theirs):
            model.policy.zero_grad()
            values, log_prob, entropy = model.policy.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
            )
            mask = batch.mask > 0
            (log_prob[mask].sum() + values.flatten()[mask].sum() + entropy[mask].sum()).backward()
            grads = [p.grad.clone() for p in model.policy.parameters() if p.grad is not None]
            results.append((values.flatten()[mask], log_prob[mask], grads))
        torch.testing.assert_close(results[0][:2], results[1][:2], rtol=0, atol=1e-6)
        assert len(results[0][2]) == len(results[1][2]) > 0
        for mine, reference in zip(results[0][2], results[1][2], strict=True):
            torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked == 3


@pytest.mark.parametrize("policy", ["rims", "lstm"])
def test_model_and_policy_save_load_give_identical_actions(policy, tmp_path):
    model = ppo(policy)
    model.learn(96)
    env = cartpole(n_envs=2, seed=5)
    obs = env.reset()

    def play(predictor, steps=30):
        actions, state, start, o = [], None, np.ones(2, dtype=bool), obs
        for _ in range(steps):
            action, state = predictor.predict(o, state=state, episode_start=start, deterministic=True)
            actions.append(action)
            o = o + 0.01 * action[:, None]  # a fixed, action-dependent observation stream
            start = np.zeros(2, dtype=bool)
        return np.array(actions), state

    reference = play(model)
    model.save(tmp_path / "model.zip")
    loaded = RimsPPO.load(tmp_path / "model.zip")
    model.policy.save(tmp_path / "policy.pt")
    policy_class = RimsPolicy if policy == "rims" else LstmPolicy
    loaded_policy = policy_class.load(tmp_path / "policy.pt")
    for other in (loaded, loaded_policy):
        actions, state = play(other)
        assert np.array_equal(actions, reference[0])
        assert np.array_equal(state[0], reference[1][0]) and np.array_equal(state[1], reference[1][1])
    if policy == "rims":
        assert loaded_policy.rims_kwargs == RIMS  # non-default sizes survive policy-only save/load
    else:
        assert loaded_policy.lstm_actor.hidden_size == 32


def discounted_returns(rewards, starts, last_values, last_dones, gamma):
    """A2C's n-step returns of a rollout ``(steps, n_envs)``, from the rewards, the episode starts (the
    step after a done), and the values that bootstrap the rollout's last step."""
    returns = np.zeros_like(rewards, dtype=np.float64)
    following = last_values * (1.0 - last_dones)
    for t in reversed(range(rewards.shape[0])):
        returns[t] = rewards[t] + gamma * following
        following = returns[t] * (1.0 - starts[t])
    return returns


@pytest.mark.parametrize("policy", ["rims", "lstm"])
def test_a2c_update_equals_hand_computed_a2c_step(policy):
    name, policy_kwargs = POLICIES[policy]
    n_envs, steps = 3, 32
    # The paper's layout (one core, both losses train it), which the step below computes by hand.
    shared = {**policy_kwargs, "critic_core": "shared"}
    model = RecurrentA2C(name, cartpole(), policy_kwargs=shared, n_steps=steps, ent_coef=0.01, seed=0, device="cpu")
    assert isinstance(model.policy.optimizer, torch.optim.RMSprop)
    before = copy.deepcopy(model.policy)
    initial = [p.detach().clone() for p in model.policy.parameters()]
    optimizer = torch.optim.RMSprop(before.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)
    model.learn(steps * n_envs)  # one rollout, one update
    # An episode ends inside the rollout, so the returns are cut and restarted there.
    assert model.rollout_buffer.episode_starts.reshape(3, steps)[:, 1:].any()

    # A2C by hand on the same rollout: each environment's steps as one sequence from its stored
    # state, resets at episode starts, n-step returns bootstrapped from the value of the state after the
    # rollout (computed here, not read from the buffer under test), plain policy-gradient + value +
    # entropy loss, RMSprop.
    buffer = model.rollout_buffer  # flattened env-major by the update
    obs = torch.as_tensor(buffer.observations).float()
    actions = torch.as_tensor(buffer.actions).long().flatten()
    starts = torch.as_tensor(buffer.episode_starts).float().flatten()
    state = (
        torch.as_tensor(buffer.hidden_states_pi[::steps]).swapaxes(0, 1).contiguous(),
        torch.as_tensor(buffer.cell_states_pi[::steps]).swapaxes(0, 1).contiguous(),
    )
    with torch.no_grad():
        last_obs = torch.as_tensor(model._last_obs).float()
        last_dones = torch.as_tensor(model._last_episode_starts).float()
        last_values = before.predict_values(last_obs, model._last_lstm_states.vf, last_dones).flatten()
    rewards = buffer.rewards  # (steps, n_envs): not flattened by the update
    returns = discounted_returns(
        rewards,
        buffer.episode_starts.reshape(n_envs, steps).T,
        last_values.numpy(),
        last_dones.numpy(),
        model.gamma,
    )
    returns = torch.as_tensor(returns.T.flatten(), dtype=torch.float32)  # env-major, as the buffer
    features = before.extract_features(obs)
    sequence = features.view(n_envs, steps, -1).swapaxes(0, 1)
    output, _ = before.lstm_actor(sequence, state, starts.view(n_envs, steps).swapaxes(0, 1))
    latent = output.swapaxes(0, 1).flatten(0, 1)
    distribution = before._get_action_dist_from_latent(before.mlp_extractor.forward_actor(latent))
    values = before.value_net(before.mlp_extractor.forward_critic(latent)).flatten()
    advantages = returns - values.detach()
    loss = (
        -(advantages * distribution.log_prob(actions)).mean()
        - 0.01 * distribution.entropy().mean()
        + 0.5 * ((returns - values) ** 2).mean()
    )
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(before.parameters(), 0.5)
    optimizer.step()
    for (name_, expected), actual in zip(before.named_parameters(), model.policy.parameters(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6, msg=f"{name_} differs")
    assert all(not torch.equal(a, b) for a, b in zip(initial, model.policy.parameters(), strict=True))


def test_a2c_rejects_ppo_only_settings():
    with pytest.raises(ValueError, match="n_epochs"):
        RecurrentA2C("RimsPolicy", cartpole(), policy_kwargs={"rims_kwargs": RIMS}, n_epochs=4)


def test_lstm_core_resets_like_rims_semantics():
    """LSTMCore with episode_starts equals nn.LSTM run piecewise from zero states."""
    torch.manual_seed(0)
    core = LSTMCore(5, 7)
    x = torch.randn(9, 3, 5)
    starts = torch.zeros(9, 3)
    starts[4, 1] = 1.0
    state = (torch.randn(1, 3, 7), torch.randn(1, 3, 7))
    output, _ = core(x, state, starts)
    plain, _ = torch.nn.LSTM.forward(core, x, state)
    assert torch.equal(output[:, [0, 2]], plain[:, [0, 2]])
    fresh, _ = torch.nn.LSTM.forward(core, x[4:, 1:2])
    torch.testing.assert_close(output[4:, 1], fresh[:, 0])
    assert not torch.allclose(output[4:, 1], plain[4:, 1])


class DictCartPole(gym.ObservationWrapper):
    """CartPole with a Dict observation, for the MultiInput policies."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({"state": env.observation_space})

    def observation(self, observation):
        return {"state": observation}


@pytest.mark.parametrize("policy", ["RimsMultiInputPolicy", "LstmMultiInputPolicy"])
def test_multi_input_policies_train_on_dict_observations(policy):
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, wrapper_class=DictCartPole)
    kwargs = {"rims_kwargs": RIMS} if policy.startswith("Rims") else {"lstm_hidden_size": 16}
    model = RimsPPO(policy, env, policy_kwargs=kwargs, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    action, state = model.predict(env.reset(), deterministic=True)
    assert action.shape == (2,) and state[0].shape == (1, 2, 32 if policy.startswith("Rims") else 16)


@pytest.mark.parametrize("policy_class", [RimsCnnPolicy, LstmCnnPolicy])
def test_cnn_runs_channels_last_with_the_same_features_and_gradients(policy_class, tmp_path):
    """Our CNN policies keep their convolutions and their input batches in channels-last layout
    (faster on CPU), also after a save/load round trip, and compute what the usual layout computes."""
    CL = torch.channels_last
    space = gym.spaces.Box(0, 255, (4, 36, 36), dtype=np.uint8)
    kwargs = {"rims_kwargs": RIMS} if policy_class is RimsCnnPolicy else {"lstm_hidden_size": 32}
    policy = policy_class(space, gym.spaces.Discrete(3), lambda _: 1e-3, **kwargs)
    convs = [m for m in policy.features_extractor.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=CL) for m in convs)
    reference = copy.deepcopy(policy.features_extractor).to(memory_format=torch.contiguous_format)
    assert not convs[0].weight.is_contiguous() and reference.cnn[0].weight.is_contiguous()
    layouts = []
    convs[0].register_forward_pre_hook(lambda _, args: layouts.append(args[0].is_contiguous(memory_format=CL)))
    obs = torch.randint(0, 256, (5, *space.shape), dtype=torch.uint8)
    features = policy.extract_features(obs)
    # The byte batch is laid out channels-last before scaling: the first convolution gets it so.
    assert layouts == [True] and obs.is_contiguous()
    expected = reference(obs.float() / 255.0)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
    features.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(convs[0].weight.grad, reference.cnn[0].weight.grad, rtol=1e-4, atol=1e-5)
    policy.save(tmp_path / "policy.pt")
    loaded = policy_class.load(tmp_path / "policy.pt")
    loaded_convs = [m for m in loaded.features_extractor.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in loaded_convs)
    torch.testing.assert_close(loaded.extract_features(obs), features.detach())
