"""Behaviour cloning on HalfCheetah from pixels, evaluated under joint noise (paper App. C.7, Table 6).

The whole pipeline, stage by stage, each writing into ``<out>/`` and skipped when its output exists:

1. ``expert``: SB3 PPO or SAC on the state vector (rl-zoo's tuned settings), saved with its
   evaluation return: ``expert/model.zip``, ``expert/vecnormalize.pkl``, ``expert/expert.json``.
2. ``collect``: the expert's episodes, rendered: ``dataset.npz`` (frames, actions, rewards, episode
   starts) and ``dataset.json`` (expert return, env settings, sha256 of the npz; loading checks it).
3. ``bc``: per model, sequence behaviour cloning: CNN encoder -> recurrent core (RIMs or LSTM) -> action,
   MSE on truncated-BPTT windows of stored episodes. ``bc/<model>/model.pt``; atomic checkpoints every
   few epochs, resumed after a crash.
4. ``evaluate``: each model's returns without and with joint noise, episodes x seeds, as
   ``results.md`` / ``results.json`` (Table 6's shape).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
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

from rims_rl.agents.config import ConfigError, CoreConfig, ImitationConfig, ImitationEvaluate, load, parse, to_dict
from rims_rl.agents.train import CheckpointAndStop, load_checkpoint, save_checkpoint, set_rng_state, stop_on_signals
from rims_rl.cores import build_core
from rims_rl.envs.mujoco import make_cheetah, render_frame
from rims_rl.utils import atomic_save, resolve_device

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


def expert(config: ImitationConfig, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the state-based expert, PPO or SAC (or load it if ``out/expert`` is complete).

    Checkpoints (model, replay buffer, normalizer statistics) every ``expert.checkpoint_every`` steps
    and on SIGINT/SIGTERM, into ``expert/checkpoint.pt``; the same command continues from there. The
    checkpoint is removed once the expert is saved and evaluated.
    """
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    folder = out / "expert"
    if (folder / "expert.json").is_file():
        info = json.loads((folder / "expert.json").read_text())
        log(f"expert: done already (return {info['return_mean']:.0f})")
        return info
    checkpoint = folder / "checkpoint.pt"
    saved = load_checkpoint(checkpoint) if checkpoint.is_file() else None
    algo, total = config.expert.algo, config.expert.total_steps
    algorithm = _expert_class(config)
    if saved is not None and saved.get("algorithm", algorithm.__name__) != algorithm.__name__:
        raise ConfigError(
            f"{checkpoint} holds a {saved['algorithm']} expert but expert.algo is {algo}: set expert.algo to "
            f"{saved['algorithm'].lower()} to continue it, or delete the checkpoint to start over"
        )
    settings = dict(getattr(config.expert, algo))
    net_arch = settings.pop("net_arch")
    policy_kwargs = {"net_arch": net_arch}
    if algo == "ppo":
        policy_kwargs = {
            "log_std_init": settings.pop("log_std_init"),
            "ortho_init": False,
            "activation_fn": nn.ReLU,
            "net_arch": {"pi": net_arch, "vf": net_arch},
        }
    seed = config.run.seed
    env_kwargs = {**_env_kwargs(config), "pixels": False}
    env = make_vec_env(make_cheetah, n_envs=1, seed=seed, env_kwargs=env_kwargs)
    if saved is not None and saved["normalizer"] is not None:
        normalized = pickle.loads(saved["normalizer"])
        normalized.set_venv(env)
        env = normalized
    elif config.expert.normalize:
        env = VecNormalize(env, gamma=settings["gamma"])
    try:
        if saved is not None:
            model = algorithm.load(io.BytesIO(saved["model"]), env=env, device="cpu")
            if saved["replay_buffer"] is not None:
                model.replay_buffer = pickle.loads(saved["replay_buffer"])
            set_rng_state(saved["rng"])
            log(f"expert: resuming {algo.upper()} at step {model.num_timesteps} of {total}")
        else:
            model = algorithm(
                "MlpPolicy", env, policy_kwargs=policy_kwargs, seed=seed, device="cpu", verbose=0, **settings
            )
            log(f"expert: {algo.upper()} on the state vector for {total} steps")
        stopper = CheckpointAndStop(checkpoint, config.expert.checkpoint_every)
        with stop_on_signals(stopper):
            model.learn(
                max(total - model.num_timesteps, 0),
                callback=stopper,
                progress_bar=config.run.progress,
                reset_num_timesteps=saved is None,
            )
        if stopper.signal is not None:
            log(f"expert: stopped at step {model.num_timesteps}; the same command continues from {checkpoint}")
            raise KeyboardInterrupt
        save_checkpoint(model, checkpoint)
        model.save(folder / "model.zip")
        if isinstance(env, VecNormalize):
            env.save(str(folder / "vecnormalize.pkl"))
    finally:
        env.close()
    returns = [episode["return"] for episode in _expert_episodes(config, out, config.expert.eval_episodes)]
    info = {
        "algo": algo,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "steps": total,
        "env": env_kwargs,
    }
    (folder / "expert.json").write_text(json.dumps(info, indent=2))
    checkpoint.unlink()  # a finished expert is never resumed, and SAC's holds its whole replay buffer
    log(f"expert: return {info['return_mean']:.0f} +- {info['return_std']:.0f}")
    return info


def _expert_episodes(
    config: ImitationConfig, out: Path, episodes: int, render: bool = False, seed: int = 100, action_noise: float = 0.0
):
    """Play the saved expert; yield per episode its return and, with ``render``, frames (T, 3, H, W) of
    the states it acted on, its actions and rewards. With ``action_noise``, the executed action is the
    expert's plus Gaussian noise, while the recorded action stays the expert's own (DART, Laskey et al.
    2017): the demonstrations then show how the expert recovers from small mistakes."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    folder = out / "expert"
    model = _expert_class(config).load(folder / "model.zip", device="cpu")
    normalizer = None
    if (folder / "vecnormalize.pkl").is_file():
        dummy = DummyVecEnv([lambda: make_cheetah(**{**_env_kwargs(config), "pixels": False})])
        normalizer = VecNormalize.load(str(folder / "vecnormalize.pkl"), dummy)
        normalizer.training = False
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
    meta_path.with_suffix(".tmp").write_text(json.dumps(meta, indent=2))
    meta_path.with_suffix(".tmp").replace(meta_path)
    log(
        f"collect: {meta['steps']} steps from {meta['episodes']} episodes; return {meta['demo_return']:.0f} with "
        f"action noise {meta['action_noise']:g} (expert alone {meta['expert_return']:.0f})"
    )
    return meta


def load_dataset(out: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The dataset and its metadata; ``ConfigError`` if missing or if the checksum does not match."""
    data_path, meta_path = out / "dataset.npz", out / "dataset.json"
    if not meta_path.is_file() or not data_path.is_file():
        raise ConfigError(f"no dataset in {out}: run the collect stage first")
    meta = json.loads(meta_path.read_text())
    if _sha256(data_path) != meta.get("sha256"):
        raise ConfigError(f"{data_path} is corrupt (sha256 differs from {meta_path}); delete both and collect again")
    with np.load(data_path) as data:
        return {key: data[key] for key in data.files}, meta


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


def train_bc(config: ImitationConfig, out: Path, name: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Sequence behaviour cloning of model ``name``; resumes from its checkpoint."""
    folder = out / "bc" / name
    final = folder / "model.pt"
    if final.is_file():
        log(f"bc {name}: done already")
        return torch.load(final, map_location="cpu", weights_only=False)["info"]
    data, _ = load_dataset(out)
    bc, env = config.bc, config.env
    device = resolve_device(str(config.run.device))
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
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        policy.load_state_dict(saved["policy"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        epoch, losses, rng = saved["epoch"], saved["losses"], saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        log(f"bc {name}: resuming at epoch {epoch}")
    parameters = sum(p.numel() for p in policy.parameters())
    bar = tqdm(total=total, initial=epoch * updates_per_epoch, desc=f"bc {name}", disable=not config.run.progress)
    started = time.perf_counter()
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
        if not math.isfinite(epoch_loss):
            raise ConfigError(f"bc {name}: the loss is not finite at epoch {epoch}; last checkpoint kept")
        epoch += 1
        losses.append(epoch_loss)
        if epoch % bc.checkpoint_every == 0 or epoch == bc.epochs:
            atomic_save(
                {
                    "policy": policy.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "epoch": epoch,
                    "losses": losses,
                    "rng": rng,
                    "torch_rng": torch.get_rng_state(),
                },
                checkpoint,
            )
    bar.close()
    info = {"model": name, "parameters": parameters, "epochs": epoch, "final_loss": losses[-1], "window": window}
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    spec = to_dict(bc.models[name])
    saved = {"policy": policy.state_dict(), "spec": spec, "actions": actions.shape[1], "info": info}
    atomic_save(saved, final)
    log(f"bc {name}: final loss {losses[-1]:.4f} ({parameters:,} parameters)")
    return info


def _load_policy(config: ImitationConfig, out: Path, name: str) -> CheetahPolicy:
    saved = torch.load(out / "bc" / name / "model.pt", map_location="cpu", weights_only=False)
    env = config.env
    policy = CheetahPolicy(
        3 * env.frame_stack, env.size, saved["actions"], parse(CoreConfig, saved["spec"], "spec"), config.bc.features
    )
    policy.load_state_dict(saved["policy"])
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
    """The stages in order; finished ones are skipped."""
    out.mkdir(parents=True, exist_ok=True)
    if "expert" in stages:
        expert(config, out, log)
    if "collect" in stages:
        collect(config, out, log)
    if "bc" in stages:
        for name in config.bc.models:
            train_bc(config, out, name, log)
    if "evaluate" in stages:
        evaluate(config, out, log)
