"""Training is bit-for-bit reproducible, and stays so across refactors of the core.

The same seeds and settings must give exactly the same parameters after a few PPO and A2C updates, on
the paths RL training takes (the compiled RIMs loop on CPU, nn.LSTM). A change that alters any number
here must say why in its commit. History: recorded at f529d8c; unchanged by the reorganisation of the
RIMs step into one definition (47037d7, issue 16); re-recorded when the policies stopped building
modules only to throw them away (a RIMs to check the arguments, sb3-contrib's nn.LSTMs now on the meta
device): those drew random numbers before the policy's own initial weights, which are now different;
re-recorded again when the shared critic stopped having sb3-contrib build a feed-forward critic it then
dropped (issue 18; the cases pin the shared layout they were recorded with, no longer the default; with
that module's draw put back, the three previous fingerprints come out exactly).
BLAS and the compiled loop pick kernels by CPU features, so fingerprints are recorded per CPU capability
(torch's ``get_cpu_capability``) and the check runs where one is recorded. AVX2 at f529d8c and after, as
above; AVX512 recorded on the project's AVX-512 VM in issue 30 (until then every fingerprint skipped there,
CI's machines included). The two RIMs runs come out the same on both; the LSTM's differs (its kernels are
the BLAS library's, chosen per capability).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from rims_rl.agents.algorithms import RecurrentA2C, RimsPPO

# Values (4 heads x 2) narrower than CartPole's 4 inputs: the cells read the projected values, the reading
# order the recorded runs had (wider values fold into the cells' weights since, see RIMs._input_side).
RIMS = {"unit_size": 8, "num_units": 4, "k_active": 2, "input_value_size": 2, "input_dropout": 0.0, "comm_dropout": 0.0}
SHARED = {"critic_core": "shared"}
PPO = {"n_steps": 32, "batch_size": 48, "n_epochs": 2}
CASES = {
    "ppo-rims": (RimsPPO, "RimsPolicy", {"rims_kwargs": RIMS, **SHARED}, PPO),
    "ppo-lstm": (RimsPPO, "LstmPolicy", {"lstm_hidden_size": 32, **SHARED}, PPO),
    "a2c-rims": (RecurrentA2C, "RimsPolicy", {"rims_kwargs": RIMS, **SHARED}, {"n_steps": 16}),
}
RIMS_PPO = "f0ad6146b3639ddea1d73627bb70ab52bbfa571cbbfd3b985f2b51dacd1d3e10"
RIMS_A2C = "a46a9640943ae4503e91b7fbd6086a685eedbd1c25de3145ca97e8fd303c7552"
FINGERPRINTS = {  # per CPU capability, then per case
    "AVX2": {
        "ppo-rims": RIMS_PPO,
        "ppo-lstm": "0ec1af70d91a2e7e60518a23790af6b85e6b5aa6f0760a0031a601c6dc898ca6",
        "a2c-rims": RIMS_A2C,
    },
    "AVX512": {
        "ppo-rims": RIMS_PPO,
        "ppo-lstm": "7d9b784440dcdd1eda7ef63cc43d623d1de88e903991e94965a19654dc2eccdf",
        "a2c-rims": RIMS_A2C,
    },
}
CAPABILITY = torch.backends.cpu.get_cpu_capability()


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


@pytest.mark.skipif(CAPABILITY not in FINGERPRINTS, reason=f"no fingerprints recorded for a {CAPABILITY} CPU")
@pytest.mark.parametrize("case", list(CASES))
def test_training_a_few_updates_is_bit_identical_to_the_recorded_run(case):
    assert fingerprint(case) == FINGERPRINTS[CAPABILITY][case]
