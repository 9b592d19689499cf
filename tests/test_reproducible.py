"""Training is bit-for-bit reproducible, and stays so across refactors of the core.

The fingerprints below were recorded at commit f529d8c, before the RIMs step was reorganised into one
definition (issue 16): the same seeds and settings must give exactly the same parameters after a few
PPO and A2C updates, on the paths RL training takes (the compiled RIMs loop on CPU, nn.LSTM). A change
that alters any number here must say why in its commit. BLAS and the compiled loop pick kernels by CPU
features, so the check runs where the fingerprints were recorded (an AVX2 CPU) and is skipped elsewhere.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from rims_rl.agents.algorithms import RecurrentA2C, RimsPPO
from stable_baselines3.common.env_util import make_vec_env

# Values (4 heads x 2) narrower than CartPole's 4 inputs: the cells read the projected values, the reading
# order the recorded runs had (wider values fold into the cells' weights since, see RIMs._input_side).
RIMS = {"unit_size": 8, "num_units": 4, "k_active": 2, "input_value_size": 2, "input_dropout": 0.0, "comm_dropout": 0.0}
CASES = {
    "ppo-rims": (RimsPPO, "RimsPolicy", {"rims_kwargs": RIMS}, {"n_steps": 32, "batch_size": 48, "n_epochs": 2}),
    "ppo-lstm": (RimsPPO, "LstmPolicy", {"lstm_hidden_size": 32}, {"n_steps": 32, "batch_size": 48, "n_epochs": 2}),
    "a2c-rims": (RecurrentA2C, "RimsPolicy", {"rims_kwargs": RIMS}, {"n_steps": 16}),
}
FINGERPRINTS = {
    "ppo-rims": "1c17a882c87cfaffd82b6e9980d6b3e070eaff9f93f1160e80a4fe916b9efd02",
    "ppo-lstm": "026af01c4bb620367d9a5841a84d91c1c15f1a5611c077552cade47d3575dde9",
    "a2c-rims": "7944c8a89a261eba59342afb7035f42b2b92c6f02e693c1e078504313a9db71c",
}
RECORDED_ON = "AVX2"


def fingerprint(case: str) -> str:
    algorithm, policy, policy_kwargs, settings = CASES[case]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = make_vec_env("CartPole-v1", n_envs=3, seed=0)
        model = algorithm(policy, env, policy_kwargs=policy_kwargs, seed=0, device="cpu", **settings)
        model.learn(3 * model.n_steps * 3)
    finally:
        torch.set_num_threads(threads)
    digest = hashlib.sha256()
    for name, parameter in model.policy.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != RECORDED_ON, reason="fingerprints from an AVX2 CPU")
@pytest.mark.parametrize("case", list(CASES))
def test_training_a_few_updates_is_bit_identical_to_the_recorded_run(case):
    assert fingerprint(case) == FINGERPRINTS[case]
