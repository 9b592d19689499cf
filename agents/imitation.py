"""Behaviour cloning on HalfCheetah from pixels, evaluated under joint noise (paper App. C.7, Table 6).

The whole pipeline, stage by stage, each writing into ``<out>/`` (locked while it runs) and skipped when
its output exists. Every checkpoint holds tensors and plain data (:mod:`rims_rl.agents.checkpointing`) and
is resumed after a stop, with the same settings:

1. ``expert``: SB3 PPO or SAC on the state vector (rl-zoo's tuned settings): ``expert/expert.pt`` (its
   weights and observation statistics, what collection reads), ``expert/model.zip`` (SB3's, for its
   users), ``expert/expert.json`` (its evaluation return).
2. ``collect``: the expert's episodes, rendered: ``dataset.npz`` (frames, actions, rewards, episode
   starts) and ``dataset.json`` (expert return, env settings, sha256 of the npz; loading checks it).
3. ``bc``: per model, sequence behaviour cloning: SB3's Nature CNN -> recurrent core (RIMs or LSTM) ->
   action, MSE on truncated-BPTT windows of stored episodes: ``bc/<model>/checkpoint.pt``, every few
   epochs and finished at the end.
4. ``evaluate``: each model's returns without and with joint noise, episodes x seeds, as
   ``results.md`` / ``results.json`` (Table 6's shape).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import NatureCNN
from torch import nn
from tqdm import tqdm

from rims_rl.agents.algorithms import algorithm_state, restore_algorithm, set_normalizer
from rims_rl.agents.checkpointing import (
    RunLock,
    atomic_write,
    check_finite,
    check_resume,
    load_checkpoint,
    load_weights,
    remove_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rims_rl.agents.config import ConfigError, CoreConfig, ImitationConfig, ImitationEvaluate, load, parse, to_dict
from rims_rl.agents.train import Checkpointer, stop_on_signals
from rims_rl.cores import build_core
from rims_rl.envs.mujoco import make_cheetah, render_frame
from rims_rl.utils import resolve_device

__all__ = ["STAGES", "CheetahPolicy", "collect", "evaluate", "expert", "load_dataset", "run", "train_bc"]

STAGES = ("expert", "collect", "bc", "evaluate")


# ------------------------------------------------------------------------------------- config


def load_imitation_config(source="mujoco/halfcheetah.yaml", overrides=()) -> ImitationConfig:
    """The imitation config (a file, a packaged name or a mapping) with ``(key, value)`` overrides, checked
    in full before any stage starts."""
    return load(ImitationConfig, source, overrides)


def _env_kwargs(config: ImitationConfig) -> dict[str, Any]:
    return to_dict(config.env)


# ------------------------------------------------------------------------------------- 1. expert


def _expert_class(config: ImitationConfig):
    from stable_baselines3 import PPO, SAC

    return {"ppo": PPO, "sac": SAC}[config.expert.algo]


def _build_expert(config: ImitationConfig, env):
    """The expert (SB3 PPO or SAC on the state vector) that ``expert.<algo>`` describes, on ``env``: what
    training builds, and what playing the saved expert rebuilds before loading its weights."""
    algo = config.expert.algo
    settings = config.expert.settings()
    net_arch = settings.pop("net_arch")
    policy_kwargs: dict[str, Any] = {"net_arch": net_arch}
    if algo == "ppo":
        policy_kwargs = {
            "log_std_init": settings.pop("log_std_init"),
            "ortho_init": False,
            "activation_fn": nn.ReLU,
            "net_arch": {"pi": net_arch, "vf": net_arch},
        }
    return _expert_class(config)(
        "MlpPolicy", env, policy_kwargs=policy_kwargs, seed=config.run.seed, device="cpu", verbose=0, **settings
    )


def _state_env(config: ImitationConfig, normalizer: dict[str, Any] | None = None):
    """One state-based HalfCheetah as an SB3 VecEnv, behind ``VecNormalize`` when the expert normalizes
    (with ``normalizer``'s statistics, frozen, when given: playing the saved expert)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env(
        make_cheetah, n_envs=1, seed=config.run.seed, env_kwargs={**_env_kwargs(config), "pixels": False}
    )
    if not config.expert.normalize:
        return env
    env = VecNormalize(env, gamma=getattr(config.expert, config.expert.algo).gamma)
    if normalizer is not None:
        set_normalizer(env, normalizer)
        env.training = False
    return env


def expert(config: ImitationConfig, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the state-based expert, PPO or SAC (or load it if ``out/expert`` is complete).

    Checkpoints (networks, optimizers, replay buffer, normalizer statistics, random streams: tensors and
    plain data) every ``expert.checkpoint_every`` steps and on SIGINT/SIGTERM, into
    ``expert/checkpoint.pt``; the same command continues from there. The finished expert's weights and
    normalizer statistics go to ``expert/expert.pt`` (what collection reads) and SB3's ``model.zip``; the
    checkpoint, which holds the whole replay buffer, is then removed.
    """
    folder = out / "expert"
    if (folder / "expert.json").is_file():
        info = json.loads((folder / "expert.json").read_text())
        log(f"expert: done already (return {info['return_mean']:.0f})")
        return info
    checkpoint = folder / "checkpoint.pt"
    saved = load_checkpoint(checkpoint, "expert") if checkpoint.is_file() else None
    algo, total = config.expert.algo, config.expert.total_steps
    algorithm = _expert_class(config)
    if saved is not None:
        if saved["algorithm"] != algorithm.__name__:
            raise ConfigError(
                f"{checkpoint} holds a {saved['algorithm']} expert but expert.algo is {algo}: set expert.algo to "
                f"{saved['algorithm'].lower()} to continue it, or delete the checkpoint to start over"
            )
        check_resume(saved["config"], _expert_experiment(config), EXPERT_MUTABLE)
    env = _state_env(config)
    try:
        model = _build_expert(config, env)
        if saved is not None:
            restore_algorithm(model, saved)
            log(f"expert: resuming {algo.upper()} at step {model.num_timesteps} of {total}")
        else:
            log(f"expert: {algo.upper()} on the state vector for {total} steps")
        stopper = Checkpointer(checkpoint, config.expert.checkpoint_every, _expert_experiment(config), "expert")
        with stop_on_signals(stopper):
            model.learn(
                max(total - model.num_timesteps, 0),
                callback=stopper,
                progress_bar=config.run.progress,
                reset_num_timesteps=saved is None,
            )
        if stopper.signal is not None:
            log(f"expert: stopped at step {stopper.steps}; the same command continues from {checkpoint}")
            raise KeyboardInterrupt
        stopper.save(finished=True)  # what a crash before the expert is saved and evaluated resumes from
        final = algorithm_state(model)
        policy = {"policy": final["parameters"]["policy"], "normalizer": final.get("normalizer")}
        save_checkpoint(folder / "expert.pt", "expert-policy", {**policy, "algorithm": final["algorithm"]})
        model.save(folder / "model.zip")
    finally:
        env.close()
    returns = [episode["return"] for episode in _expert_episodes(config, out, config.expert.eval_episodes)]
    info = {
        "algo": algo,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "steps": total,
        "env": {**_env_kwargs(config), "pixels": False},
    }
    atomic_write(folder / "expert.json", json.dumps(info, indent=2).encode())
    checkpoint.unlink(missing_ok=True)  # a finished expert is never resumed, and SAC's holds its whole replay buffer
    log(f"expert: return {info['return_mean']:.0f} +- {info['return_std']:.0f}")
    return info


# What a resumed expert may change: its budget, its checkpoint cadence, and its evaluation.
EXPERT_MUTABLE = ("expert.total_steps", "expert.checkpoint_every", "expert.eval_episodes")


def _expert_experiment(config: ImitationConfig) -> dict[str, Any]:
    """What defines the expert's training (the resume contract compares it)."""
    return {"env": _env_kwargs(config), "expert": to_dict(config.expert), "seed": config.run.seed}


def _load_expert(config: ImitationConfig, out: Path):
    """The finished expert, rebuilt from the config with the weights of ``expert/expert.pt`` (no code
    is loaded from the file), and its frozen observation normalizer (or None)."""
    saved = load_checkpoint(out / "expert" / "expert.pt", "expert-policy")
    if saved["algorithm"] != _expert_class(config).__name__:
        raise ConfigError(
            f"{out / 'expert'} holds a {saved['algorithm']} expert but expert.algo is {config.expert.algo}"
        )
    env = _state_env(config, saved["normalizer"])
    model = _build_expert(config, env)
    load_weights(model.policy, saved["policy"], f"{out / 'expert' / 'expert.pt'} does not fit the expert settings")
    return model, (env if saved["normalizer"] is not None else None)


def _expert_episodes(
    config: ImitationConfig, out: Path, episodes: int, render: bool = False, seed: int = 100, action_noise: float = 0.0
):
    """Play the saved expert; yield per episode its return and, with ``render``, frames (T, 3, H, W) of
    the states it acted on, its actions and rewards. With ``action_noise``, the executed action is the
    expert's plus Gaussian noise, while the recorded action stays the expert's own (DART, Laskey et al.
    2017): the demonstrations then show how the expert recovers from small mistakes."""
    model, normalizer = _load_expert(config, out)
    env = make_cheetah(**{**_env_kwargs(config), "pixels": False})
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            noise = np.random.default_rng([seed, episode])
            frames, actions, rewards, done = [], [], [], False
            while not done:
                if render:
                    frames.append(render_frame(env))
                policy_obs = normalizer.normalize_obs(obs[None]) if normalizer is not None else obs[None]
                action = model.predict(policy_obs, deterministic=config.collect.deterministic)[0][0]
                action = np.clip(action, -1.0, 1.0)
                executed = action + noise.normal(0.0, action_noise, action.shape) if action_noise else action
                obs, reward, terminated, truncated, _ = env.step(np.clip(executed, -1.0, 1.0))
                actions.append(action)
                rewards.append(reward)
                done = terminated or truncated
            yield {
                "return": float(np.sum(rewards)),
                "frames": np.stack(frames) if render else None,
                "actions": np.asarray(actions, dtype=np.float32),
                "rewards": np.asarray(rewards, dtype=np.float32),
            }
    finally:
        env.close()
        model.get_env().close()


# ------------------------------------------------------------------------------------- 2. collect


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect(config: ImitationConfig, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Record the expert's episodes as pixels into ``dataset.npz`` + ``dataset.json``."""
    data_path, meta_path = out / "dataset.npz", out / "dataset.json"
    if meta_path.is_file():
        meta = load_dataset(out)[1]  # a corrupt dataset stops here with a clear error, untouched
        log(f"collect: done already ({meta['steps']} steps, expert return {meta['expert_return']:.0f})")
        return meta
    settings = config.collect
    episodes = list(_expert_episodes(config, out, settings.episodes, render=True, action_noise=settings.action_noise))
    frames = np.concatenate([e["frames"] for e in episodes])
    starts = np.concatenate([np.arange(len(e["actions"])) == 0 for e in episodes])
    temporary = data_path.with_suffix(".tmp.npz")
    np.savez_compressed(
        temporary,
        frames=frames,
        actions=np.concatenate([e["actions"] for e in episodes]),
        rewards=np.concatenate([e["rewards"] for e in episodes]),
        episode_starts=starts,
    )
    temporary.replace(data_path)
    returns = [e["return"] for e in episodes]
    expert_info = json.loads((out / "expert" / "expert.json").read_text())
    meta = {
        "episodes": len(episodes),
        "steps": len(frames),
        "expert_return": expert_info["return_mean"],  # clean rollouts, measured by the expert stage
        "demo_return": float(np.mean(returns)),  # the recorded episodes, with the action noise executed
        "demo_return_std": float(np.std(returns)),
        "action_noise": settings.action_noise,
        "env": _env_kwargs(config),
        "sha256": _sha256(data_path),
    }
    atomic_write(meta_path, json.dumps(meta, indent=2).encode())
    log(
        f"collect: {meta['steps']} steps from {meta['episodes']} episodes; return {meta['demo_return']:.0f} with "
        f"action noise {meta['action_noise']:g} (expert alone {meta['expert_return']:.0f})"
    )
    return meta


DATASET_KEYS = ("frames", "actions", "rewards", "episode_starts")


def load_dataset(out: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The dataset and its metadata; ``ConfigError`` if missing, if the checksum does not match, or if an
    array is missing."""
    data_path, meta_path = out / "dataset.npz", out / "dataset.json"
    if not meta_path.is_file() or not data_path.is_file():
        raise ConfigError(f"no dataset in {out}: run the collect stage first")
    meta = json.loads(meta_path.read_text())
    if _sha256(data_path) != meta.get("sha256"):
        raise ConfigError(f"{data_path} is corrupt (sha256 differs from {meta_path}); delete both and collect again")
    try:
        with np.load(data_path) as data:  # allow_pickle stays off: arrays only
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {data_path}: {error}") from None
    missing = sorted(set(DATASET_KEYS) - set(arrays))
    if missing:
        raise ConfigError(f"{data_path} lacks {', '.join(missing)}: delete it and {meta_path.name}, and collect again")
    return arrays, meta


# ------------------------------------------------------------------------------------- 3. bc


class CheetahPolicy(nn.Module):
    """Pixels to actions: SB3's Nature CNN over the stacked frames, a recurrent core, a tanh action head.

    ``forward(frames (T, B, C, H, W) uint8, state, episode_starts (T, B)) -> (actions (T, B, A), state)``.
    """

    def __init__(self, channels: int, size: int, actions: int, core: CoreConfig, features: int) -> None:
        super().__init__()
        frames = spaces.Box(0, 255, (channels, size, size), np.uint8)
        self.encoder = NatureCNN(frames, features_dim=features)
        self.core = build_core(core.core, features, core.settings)
        self.head = nn.Linear(self.core.hidden_size, actions)

    def forward(self, frames: torch.Tensor, state=None, episode_starts: torch.Tensor | None = None):
        steps, batch = frames.shape[:2]
        features = self.encoder(frames.flatten(0, 1).float() / 255.0).view(steps, batch, -1)
        output, state = self.core(features, state, episode_starts)
        return torch.tanh(self.head(output)), state


def _stack_index(starts: np.ndarray, frame_stack: int) -> np.ndarray:
    """For each step, the indices of its last ``frame_stack`` frames (oldest first), repeating the
    episode's first frame before it starts (as gymnasium's FrameStackObservation does)."""
    episode_first = np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))
    offsets = np.arange(-frame_stack + 1, 1)
    return np.maximum(np.arange(len(starts))[:, None] + offsets, episode_first[:, None])


def random_shift(batch: torch.Tensor, pad: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift each window's frames by up to ``pad`` pixels (edge-padded), the same shift at every step
    of a window: the augmentation that makes pixel policies generalise from few demonstrations (DrQ)."""
    steps, windows, channels, height, width = batch.shape
    padded = nn.functional.pad(batch.flatten(0, 1).float(), (pad, pad, pad, pad), mode="replicate")
    padded = padded.view(steps, windows, channels, height + 2 * pad, width + 2 * pad)
    shifts = rng.integers(0, 2 * pad + 1, size=(windows, 2))
    shifted = [padded[:, w, :, dy : dy + height, dx : dx + width] for w, (dy, dx) in enumerate(shifts)]
    return torch.stack(shifted, dim=1).to(batch.dtype)


# What a resumed behaviour cloning may change: how often it checkpoints, where and how visibly it runs.
BC_MUTABLE = ("bc.checkpoint_every", "run.device", "run.progress", "run.out")


def _bc_experiment(config: ImitationConfig, name: str, dataset: str) -> dict[str, Any]:
    """What defines one model's behaviour cloning (the resume contract compares it)."""
    return {
        "env": _env_kwargs(config),
        "bc": to_dict(config.bc),
        "run": to_dict(config.run),
        "model": name,
        "dataset": dataset,
    }


def train_bc(config: ImitationConfig, out: Path, name: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sequence behaviour cloning of model ``name``, checkpointed every ``bc.checkpoint_every`` epochs into
    ``bc/<name>/checkpoint.pt`` and resumed from there; the finished checkpoint is the trained model."""
    folder = out / "bc" / name
    checkpoint = folder / "checkpoint.pt"
    saved = load_checkpoint(checkpoint, "bc") if checkpoint.is_file() else None
    if saved is not None and saved["finished"]:
        log(f"bc {name}: done already")
        return saved["info"]
    data, meta = load_dataset(out)
    bc, env = config.bc, config.env
    experiment = _bc_experiment(config, name, meta["sha256"])
    device = resolve_device(config.run.device)
    seed = config.run.seed
    torch.manual_seed(seed)
    frames = torch.as_tensor(data["frames"])
    actions = torch.as_tensor(data["actions"])
    stacks = torch.as_tensor(_stack_index(data["episode_starts"], env.frame_stack))
    # Windows never cross an episode end: valid starts are those with `window` steps left in their episode.
    starts = data["episode_starts"]
    last = np.r_[np.nonzero(starts)[0][1:] - 1, len(starts) - 1][np.cumsum(starts) - 1]  # episode's last step
    remaining = last - np.arange(len(starts)) + 1
    window = int(min(bc.window, remaining.max()))
    valid = np.nonzero(remaining >= window)[0]
    updates_per_epoch = max(1, len(starts) // (window * bc.batch_size))

    policy = CheetahPolicy(3 * env.frame_stack, env.size, actions.shape[1], bc.models[name], bc.features)
    policy.to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=bc.learning_rate)
    total = bc.epochs * updates_per_epoch
    # Linear decay to 0: at a constant rate, RIMs k_A 3 reached loss 0.04 and then diverged to 0.37.
    decay = bc.lr_decay  # checked with the config
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: max(0.0, 1.0 - update / total) if decay == "linear" else 1.0
    )
    rng = np.random.default_rng(seed)
    epoch, losses = 0, []
    if saved is not None:
        check_resume(saved["experiment"], experiment, BC_MUTABLE)
        policy.load_state_dict(saved["policy"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        epoch, losses = saved["epoch"], saved["losses"]
        rng.bit_generator.state = saved["numpy_generator"]
        set_rng_state(saved["rng"])
        log(f"bc {name}: resuming at epoch {epoch}")
    parameters = sum(p.numel() for p in policy.parameters())
    bar = tqdm(total=total, initial=epoch * updates_per_epoch, desc=f"bc {name}", disable=not config.run.progress)
    started = time.perf_counter()
    info: dict[str, Any] = {"model": name, "parameters": parameters, "window": window}

    def save(finished: bool) -> None:
        payload = {
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "epoch": epoch,
            "losses": losses,
            "numpy_generator": rng.bit_generator.state,
            "rng": rng_state(),
            "spec": to_dict(bc.models[name]),
            "actions": int(actions.shape[1]),
            "experiment": experiment,
            "finished": finished,
            "info": info,
        }
        save_checkpoint(checkpoint, "bc", payload)

    while epoch < bc.epochs:
        epoch_loss = 0.0
        for _ in range(updates_per_epoch):
            first = torch.as_tensor(rng.choice(valid, size=bc.batch_size))
            steps = first[None, :] + torch.arange(window)[:, None]  # (T, B)
            batch = frames[stacks[steps]].flatten(2, 3).to(device)  # (T, B, stack * 3, H, W)
            if bc.random_shift:
                batch = random_shift(batch, bc.random_shift, rng)
            predicted, _ = policy(batch)
            loss = nn.functional.mse_loss(predicted, actions[steps].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), bc.max_grad_norm)
            optimizer.step()
            schedule.step()
            epoch_loss += loss.item() / updates_per_epoch
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        diverged = f"bc {name}: the loss is not finite at epoch {epoch}; {checkpoint} is kept"
        check_finite([torch.tensor(epoch_loss)], lambda message=diverged: message)
        epoch += 1
        losses.append(epoch_loss)
        if epoch % bc.checkpoint_every == 0 and epoch < bc.epochs:
            save(finished=False)
    bar.close()
    info |= {"epochs": epoch, "final_loss": losses[-1], "train_seconds": round(time.perf_counter() - started, 1)}
    save(finished=True)
    log(f"bc {name}: final loss {losses[-1]:.4f} ({parameters:,} parameters)")
    return info


def _load_policy(config: ImitationConfig, out: Path, name: str) -> CheetahPolicy:
    """Model ``name``'s trained policy, rebuilt from its saved settings with its weights (no code is loaded)."""
    saved = load_checkpoint(out / "bc" / name / "checkpoint.pt", "bc")
    if not saved["finished"]:
        raise ConfigError(f"bc {name} has not finished training: run the bc stage first")
    env = config.env
    spec = parse(CoreConfig, saved["spec"], f"bc.models.{name}")
    policy = CheetahPolicy(3 * env.frame_stack, env.size, saved["actions"], spec, config.bc.features)
    load_weights(policy, saved["policy"], f"{out / 'bc' / name / 'checkpoint.pt'} does not fit its saved settings")
    return policy.eval()


# ------------------------------------------------------------------------------------- 4. evaluate


@torch.no_grad()
def play(policy: CheetahPolicy, env, seed: int) -> float:
    """One episode with the recurrent state carried from step to step; its return."""
    obs, _ = env.reset(seed=seed)
    state, total, done = None, 0.0, False
    while not done:
        action, state = policy(torch.as_tensor(obs)[None, None], state)
        obs, reward, terminated, truncated, _ = env.step(action[0, 0].numpy())
        total += float(reward)
        done = terminated or truncated
    return total


def evaluate(config: ImitationConfig, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every model's return without and with joint noise (mean and std over episodes and seeds)."""
    settings = config.evaluate
    noise = settings.joint_noise
    results = {}
    for name in config.bc.models:
        policy = _load_policy(config, out, name)
        results[name] = {}
        for label, std in (("no noise", 0.0), (f"noise {noise:g}", noise)):
            env = make_cheetah(**_env_kwargs(config), joint_noise=std)
            try:
                returns = [
                    play(policy, env, seed=1000 * seed + episode)
                    for seed in settings.seeds
                    for episode in range(settings.episodes)
                ]
            finally:
                env.close()
            results[name][label] = {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "returns": returns}
            log(f"evaluate {name} ({label}): {np.mean(returns):.0f} +- {np.std(returns):.0f}")
    meta = json.loads((out / "dataset.json").read_text())
    (out / "results.json").write_text(
        json.dumps({"expert_return": meta["expert_return"], "results": results}, indent=2)
    )
    (out / "results.md").write_text(_table(results, meta, settings))
    return results


def _table(results: dict[str, Any], meta: dict[str, Any], settings: ImitationEvaluate) -> str:
    labels = list(next(iter(results.values())))
    runs = len(settings.seeds) * settings.episodes
    lines = [
        f"HalfCheetah from pixels, behaviour cloning of an expert with return {meta['expert_return']:.0f} "
        f"({meta['episodes']} episodes, {meta['steps']} steps). Returns: mean +- std over {runs} episodes "
        f"(seeds {', '.join(map(str, settings.seeds))}).",
        "",
        "| model | " + " | ".join(labels) + " | change under noise |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for name, row in results.items():
        cells = [f"{row[label]['mean']:.0f} +- {row[label]['std']:.0f}" for label in labels]
        change = row[labels[-1]]["mean"] - row[labels[0]]["mean"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {change:+.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- all


def run(config: ImitationConfig, out: Path, stages=STAGES, log: Callable[[str], None] = print) -> None:
    """The stages in order, finished ones skipped, in ``out`` locked against a second process."""
    with RunLock(out):
        remove_temporaries(out)
        _run_stages(config, out, stages, log)


def _run_stages(config: ImitationConfig, out: Path, stages, log: Callable[[str], None]) -> None:
    if "expert" in stages:
        expert(config, out, log)
    if "collect" in stages:
        collect(config, out, log)
    if "bc" in stages:
        for name in config.bc.models:
            train_bc(config, out, name, log)
    if "evaluate" in stages:
        evaluate(config, out, log)
