"""Train a recurrent PPO or A2C agent from a YAML config: the whole run, top to bottom.

1. ``resolve_config``: the YAML file and the overrides (``--set`` and the command line's choices), checked
   in full by the config schema (:class:`rims_rl.agents.config.TrainConfig`) before any environment starts.
2. ``train``: run folder ``<out>/<env>/<algo>-<policy>/seed<N>/`` with the resolved config, CSV and
   TensorBoard logs, periodic evaluations (``evaluations.npz``), atomic checkpoints
   (``checkpoints/latest.pt``) and the final model (``model.zip``); optional wandb tracking.
3. ``resume``: continue a run from its latest checkpoint (model, optimizer, step count, RNG).

SIGINT / SIGTERM save a checkpoint and stop; a non-finite parameter stops training with a clear
message and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import io
import pickle
import random
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.vec_env import VecNormalize

from rims_rl.agents.algorithms import RecurrentA2C, RimsPPO
from rims_rl.agents.config import ConfigError, TrainConfig, load, to_dict
from rims_rl.agents.runs import run_dir_for, run_state
from rims_rl.agents.tracking import start_tracking
from rims_rl.envs import make_env
from rims_rl.extractors import MiniGridExtractor
from rims_rl.policies import LstmPolicy, RimsPolicy
from rims_rl.utils import atomic_save, resolve_device

__all__ = [
    "TrainingDiverged",
    "build_model",
    "ensure_run",
    "resolve_config",
    "resume",
    "schedule",
    "train",
]

ALGORITHMS = {"ppo": RimsPPO, "a2c": RecurrentA2C}
POLICIES = {"rims": RimsPolicy, "lstm": LstmPolicy}
EXTRACTORS = {
    "nature_cnn": NatureCNN,
    "flatten": FlattenExtractor,
    "combined": CombinedExtractor,
    "minigrid": MiniGridExtractor,
}


class TrainingDiverged(RuntimeError):
    """A parameter became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------- config


def resolve_config(source, overrides: Iterable[tuple[str, Any]] = ()) -> TrainConfig:
    """The training config of a YAML file (or mapping) with ``(key, value)`` overrides, checked in full
    (including the device). Raises ``ConfigError``."""
    return load(TrainConfig, source, overrides)


def schedule(value: float | str):
    """A number, or ``lin_X``: linear decay from X to 0 over training (rl-zoo's notation); the config
    schema has checked the form."""
    if isinstance(value, str):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def _model_file(path: str | Path) -> Path:
    """A model.zip given directly or as the run folder holding it."""
    path = Path(path)
    model = path / "model.zip" if path.is_dir() else path
    if not model.is_file():
        raise ConfigError(f"run.init_from: no trained model at {path} (a model.zip, or a run folder holding one)")
    return model


def init_weights(model, path: str | Path) -> None:
    """Start ``model``'s policy from the weights of the model saved at ``path`` (transfer, fine-tuning).

    Only the policy's weights move: the optimizer, step counter and schedules start fresh. The two
    policies must have the same shapes (same core sizes and action count).
    """
    from stable_baselines3.common.save_util import load_from_zip_file

    _, params, _ = load_from_zip_file(_model_file(path), device=model.device)
    try:
        model.policy.load_state_dict(params["policy"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise ConfigError(f"run.init_from: {path} does not fit this policy ({first})") from None


# ------------------------------------------------------------------------------------- model


def build_model(config: TrainConfig, env, device: torch.device):
    """The algorithm object with the configured policy, on ``env``."""
    hyper = {key: schedule(value) for key, value in to_dict(config.hyperparameters).items() if value is not None}
    settings = to_dict(config.policy_kwargs)
    extractor = EXTRACTORS[settings.pop("features_extractor")]
    policy_kwargs = {**settings, "features_extractor_class": extractor}
    if config.policy == "rims":
        policy_kwargs["rims_kwargs"] = config.rims.kwargs()
    else:
        policy_kwargs["lstm_hidden_size"] = config.lstm.lstm_hidden_size
    return ALGORITHMS[config.algo](
        POLICIES[config.policy],
        env,
        policy_kwargs=policy_kwargs,
        seed=config.run.seed,
        device=device,
        verbose=0,
        **hyper,
    )


def parameter_count(model) -> dict[str, int]:
    """Trainable parameters: the whole policy and its recurrent core(s)."""
    policy = model.policy
    cores = [policy.lstm_actor] + ([policy.lstm_critic] if policy.lstm_critic is not None else [])
    return {
        "policy": sum(p.numel() for p in policy.parameters()),
        "core": sum(p.numel() for core in cores for p in core.parameters()),
    }


# ------------------------------------------------------------------------------------- callbacks


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what a checkpoint's ``rng`` entry holds."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(model, path: Path) -> None:
    """Model, optimizer, step counter and RNG state in one file, written atomically; for off-policy
    algorithms also the replay buffer, and the observation normalizer when the env has one (an
    off-policy run resumed without its buffer, or a normalized one without its statistics, would not
    continue the same training)."""
    buffer = io.BytesIO()
    model.save(buffer)
    replay = getattr(model, "replay_buffer", None)
    env = model.get_env()
    saved = {
        "model": buffer.getvalue(),
        "algorithm": type(model).__name__,  # so that a resume with another algorithm is refused, not misloaded
        "num_timesteps": model.num_timesteps,
        "rng": _rng_state(),
        "replay_buffer": pickle.dumps(replay) if replay is not None else None,
        "normalizer": pickle.dumps(env) if isinstance(env, VecNormalize) else None,
    }
    atomic_save(saved, path)


def _finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.policy.parameters())


class CheckpointAndStop(BaseCallback):
    """Atomic checkpoints every ``every`` steps; on SIGINT/SIGTERM a last one, then stop.

    Refuses to checkpoint (and stops training) once a parameter is not finite, so the last good
    checkpoint survives a divergence.
    """

    def __init__(self, path: Path, every: int) -> None:
        super().__init__()
        self.path, self.every = path, every
        self.signal: int | None = None
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every if self.every else 0

    def _on_rollout_start(self) -> None:
        if not _finite(self.model):
            raise TrainingDiverged(
                f"a policy parameter is NaN or infinite after {self.num_timesteps} steps; training stopped. "
                f"The last good checkpoint is {self.path}"
            )

    def _on_step(self) -> bool:
        if self.signal is not None:
            if _finite(self.model):
                save_checkpoint(self.model, self.path)
            return False
        if self.every and self.num_timesteps >= self._next:
            if not _finite(self.model):
                self._on_rollout_start()
            save_checkpoint(self.model, self.path)
            self._next += self.every
        return True


@contextmanager
def stop_on_signals(stopper: CheckpointAndStop) -> Iterator[None]:
    """Inside, SIGINT and SIGTERM make ``stopper`` write a last checkpoint and end training cleanly."""

    def on_signal(signum, frame):
        stopper.signal = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------- runs


def train(config: TrainConfig, run_dir: Path | None = None, resume_from: dict | None = None) -> dict[str, Any]:
    """Train as ``config`` says, from scratch or from a loaded checkpoint (``resume_from``).

    Returns a summary; raises ``TrainingDiverged`` on NaN.
    """
    run = config.run
    device = resolve_device(run.device)
    run_dir = Path(run_dir or run_dir_for(config))
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    if resume_from is None and checkpoint.exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick another seed")
    if resume_from is None and run.init_from is not None:
        _model_file(run.init_from)  # fails before any environment starts
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    env = make_env(config.env.settings(), seed=run.seed)
    eval_env = None
    try:
        if resume_from is not None:
            model = ALGORITHMS[config.algo].load(io.BytesIO(resume_from["model"]), env=env, device=device)
            set_rng_state(resume_from["rng"])
        else:
            model = build_model(config, env, device)
            if run.init_from is not None:
                init_weights(model, run.init_from)
        tracking = start_tracking(config, run_dir) if run.track else None
        if resume_from is not None and (run_dir / "progress.csv").exists():
            # SB3's CSV logger truncates progress.csv: keep the earlier part beside it.
            parts = len(list(run_dir.glob("progress.part*.csv")))
            (run_dir / "progress.csv").rename(run_dir / f"progress.part{parts}.csv")
        model.set_logger(configure(str(run_dir), ["csv", "tensorboard"]))

        stopper = CheckpointAndStop(checkpoint, run.checkpoint_every)
        callbacks: list[BaseCallback] = [stopper]
        if run.eval_every and run.eval_episodes:
            eval_env = make_env(
                config.env.settings(), seed=run.seed + 10_000, evaluation=True, n_envs=min(run.eval_episodes, 8)
            )
            evaluator = EvalCallback(
                eval_env,
                n_eval_episodes=run.eval_episodes,
                eval_freq=max(run.eval_every // env.num_envs, 1),
                log_path=str(run_dir),
                deterministic=run.eval_deterministic,
                verbose=0,
                warn=False,  # our Atari envs report full-game scores without SB3's Monitor
            )
            earlier = run_dir / "evaluations.npz"
            if resume_from is not None and earlier.exists():
                # EvalCallback rewrites evaluations.npz from its own lists: start them with the past.
                with np.load(earlier) as past:
                    evaluator.evaluations_timesteps = past["timesteps"].tolist()
                    evaluator.evaluations_results = past["results"].tolist()
                    evaluator.evaluations_length = past["ep_lengths"].tolist()
            callbacks.append(evaluator)
        if tracking is not None:
            callbacks.append(tracking.callback)

        try:
            with stop_on_signals(stopper):
                model.learn(
                    total_timesteps=max(config.total_steps - model.num_timesteps, 0),
                    callback=CallbackList(callbacks),
                    progress_bar=run.progress,
                    reset_num_timesteps=resume_from is None,
                )
        finally:
            if tracking is not None:
                tracking.finish()
        if stopper.signal is None:
            save_checkpoint(model, checkpoint)
            model.save(run_dir / "model.zip")
        return {
            "run_dir": str(run_dir),
            "num_timesteps": model.num_timesteps,
            "interrupted_by": stopper.signal,
            "parameters": parameter_count(model),
            "device": str(device),
        }
    finally:
        env.close()
        if eval_env is not None:
            eval_env.close()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by ``save_checkpoint``; a missing or unreadable one is a ``ConfigError``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(saved, dict) or "model" not in saved:
            raise ValueError("not a rims-rl checkpoint")
        return saved
    except FileNotFoundError:
        raise ConfigError(f"no checkpoint at {path}") from None
    except Exception as error:
        raise ConfigError(f"cannot read checkpoint {path}: {error}") from None


def resume(run_dir: str | Path, overrides: Iterable[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from ``checkpoints/latest.pt``, with its saved config and
    ``overrides`` (such as a new ``total_steps``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    saved = load_checkpoint(run_dir / "checkpoints" / "latest.pt")  # before any environment starts
    config = resolve_config(run_dir / "config.yaml", overrides)
    return train(config, run_dir=run_dir, resume_from=saved)


def ensure_run(config: TrainConfig, run_dir: str | Path | None = None) -> str:
    """Bring the run to completion, whatever state it is in: ``"done"`` if it has its final model
    already, ``"resumed"`` if it continued from its checkpoint, ``"trained"`` if it started afresh.

    What runners (sweeps, experiments) call: running it twice never trains anything twice.
    """
    run_dir = Path(run_dir or run_dir_for(config))
    state = run_state(run_dir)
    if state == "done":
        return "done"
    if state == "resume":
        summary = resume(run_dir, [("total_steps", config.total_steps)])
        status = "resumed"
    else:
        summary = train(config, run_dir)
        status = "trained"
    if summary["interrupted_by"] is not None:
        raise KeyboardInterrupt(f"{run_dir}: stopped by signal {summary['interrupted_by']}; checkpoint saved")
    return status
