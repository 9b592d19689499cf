"""Train a recurrent PPO or A2C agent from a YAML config: the whole run, top to bottom.

1. ``resolve_config``: the YAML file and the overrides (``--set`` and the command line's choices), checked
   in full by the config schema (:class:`rims_rl.agents.config.TrainConfig`) before any environment starts.
2. ``train``: the run folder ``<out>/<env>/<label>/seed<N>/`` (locked while training, see
   :mod:`rims_rl.agents.checkpointing`) with the config (``config.yaml``), the logs (``progress.csv``,
   ``tensorboard/`` and wandb, written as training goes and cut back to the checkpoint on a resume:
   :mod:`rims_rl.agents.logs`), periodic
   evaluations (``evaluations.npz``), the checkpoint (``checkpoints/latest.pt``: tensors and plain data)
   and, at the end, SB3's ``model.zip``; optional wandb tracking.
3. ``resume``: continue a run from its checkpoint; only the budget, device, tracking, progress,
   evaluation and checkpoint settings may change.

Checkpoints are taken at the start of a rollout (the policy just updated, nothing half-collected), every
``run.checkpoint_every`` steps; SIGINT / SIGTERM write one from the state of the last rollout start and stop.
A non-finite parameter stops training with one line and leaves the last good checkpoint.
"""

from __future__ import annotations

import io
import pickle
import signal
import sys
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback, ProgressBarCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN

from rims_rl.agents.algorithms import RecurrentA2C, RimsPPO, algorithm_state, restore_algorithm
from rims_rl.agents.checkpointing import (
    RunLock,
    atomic_write,
    check_finite,
    check_resume,
    load_checkpoint,
    load_weights,
    policy_state,
    remove_temporaries,
    save_checkpoint,
)
from rims_rl.agents.config import MUTABLE, ConfigError, TrainConfig, load, read_yaml, to_dict, upgrade_record
from rims_rl.agents.logs import RunLog
from rims_rl.agents.runs import CHECKPOINT, read_evaluations, run_dir_for, run_state
from rims_rl.agents.tracking import start_tracking
from rims_rl.envs import make_env
from rims_rl.extractors import MiniGridExtractor, set_extractor_for
from rims_rl.policies import LstmPolicy, RimsPolicy
from rims_rl.utils import resolve_device

__all__ = [
    "MUTABLE",
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


# ------------------------------------------------------------------------------------- config


def resolve_config(source, overrides: Iterable[tuple[str, Any]] = ()) -> TrainConfig:
    """The training config of a YAML file (or mapping) with ``(key, value)`` overrides, checked in full
    (including the device). Raises ``ConfigError``."""
    return load(TrainConfig, source, overrides)


def run_config(run_dir: str | Path, overrides: Iterable[tuple[str, Any]] = ()) -> TrainConfig:
    """The training config recorded in a run folder (``config.yaml``), a record of an earlier release
    upgraded (:func:`~rims_rl.agents.config.upgrade_record`), with ``overrides``, checked in full."""
    path = Path(run_dir) / "config.yaml"
    return resolve_config(upgrade_record(read_yaml(path)), overrides)


def schedule(value: float | str):
    """A number, or ``lin_X``: linear decay from X to 0 over training (rl-zoo's notation); the config
    schema has checked the form."""
    if isinstance(value, str):
        start = float(value[4:])
        # SB3 trains whole rollouts, so the last one of a total that is not a multiple of the rollout ends
        # past it, where progress_remaining is below 0: the rate (or clip range) stays at 0 there.
        return lambda progress_remaining: max(progress_remaining, 0.0) * start
    return value


def policy_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The policy weights saved at ``path`` for ``run.init_from``: a run folder (its checkpoint), a
    checkpoint file, or a ``model.zip`` (SB3's saved model: only its ``policy.pth``, read as tensors, so no
    code in the archive runs). Anything else is one ``ConfigError`` line."""
    path = Path(path)
    if path.is_file() and path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive, archive.open("policy.pth") as member:
                state = torch.load(io.BytesIO(member.read()), map_location="cpu", weights_only=True)
        except (zipfile.BadZipFile, KeyError, OSError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(f"run.init_from: {path} is not a model.zip with policy weights ({detail})") from None
    else:
        state = policy_state(load_checkpoint(_checkpoint_of(path, "run.init_from"), "train"))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"run.init_from: {path} holds no policy weights")
    return state


def init_weights(model, path: str | Path) -> None:
    """Start ``model``'s policy from the weights saved at ``path`` (:func:`policy_weights`): transfer,
    fine-tuning. Only the policy's weights move: the optimizer, step counter and schedules start fresh. The
    two policies must have the same shapes (core sizes, action count)."""
    load_weights(model.policy, policy_weights(path), f"run.init_from: {path} does not fit this policy")


def _checkpoint_of(path: str | Path, what: str) -> Path:
    """The checkpoint of a run folder (or the checkpoint file given)."""
    path = Path(path)
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    if not checkpoint.is_file():
        raise ConfigError(f"{what}: no trained model at {path} (a run folder, a checkpoint or a model.zip)")
    return checkpoint


# ------------------------------------------------------------------------------------- model


def build_model(config: TrainConfig, env, device: torch.device):
    """The algorithm object with the configured policy, on ``env``."""
    hyper = {key: schedule(value) for key, value in to_dict(config.hyperparameters).items() if value is not None}
    settings = to_dict(config.policy_kwargs)
    extractor = EXTRACTORS[settings.pop("features_extractor")]
    if settings["features"] == "set":  # the config check knows the env kind; here the observations themselves
        try:
            set_extractor_for(extractor, env.observation_space)
        except ValueError as error:
            raise ConfigError(f"policy_kwargs.features: {error}") from None
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


# ------------------------------------------------------------------------------------- checkpoints


class Checkpointer(BaseCallback):
    """Checkpoints of an SB3 algorithm every ``every`` steps (for an on-policy one, at the start of a
    rollout: the policy just updated, nothing half-collected); on SIGINT/SIGTERM a last one, then stop. An on-policy
    algorithm stopped mid-rollout is saved as it was when the rollout started (its networks and optimizer
    have not changed since; its random streams, counters and episodes were kept then), so the resumed run
    collects that rollout again (its log rows too: :class:`rims_rl.agents.logs.RunLog` cuts the record back
    to the checkpoint when the run resumes).

    A NaN or infinite parameter stops training before anything is saved, so the last good checkpoint survives.
    """

    def __init__(self, path: Path, every: int, record: dict[str, Any], kind: str) -> None:
        """``record``: the config that defines the experiment (the resume contract compares it); ``kind``: the
        checkpoint's kind."""
        super().__init__()
        self.path, self.every, self.record, self.kind = path, every, record, kind
        self.signal: int | None = None
        self._next = 0
        self._snapshot: dict[str, Any] | None = None

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every if self.every else 0

    def _on_rollout_start(self) -> None:
        check_finite(
            self.model.policy.parameters(),
            lambda: (
                f"a policy parameter is NaN or infinite after {self.num_timesteps} steps; training stopped. "
                f"The last good checkpoint is {self.path}"
            ),
        )
        if isinstance(self.model, OnPolicyAlgorithm):
            self._snapshot = {**algorithm_state(self.model, parameters=False), "logged": self._logged()}
        if self.signal is None and self.every and self.num_timesteps >= self._next:
            self.save()
            self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.signal is not None:
            self.save()
            return False
        return True

    def _logged(self) -> dict[str, Any]:
        """Values recorded but not yet dumped (the last update's losses): the next log row needs them."""
        logger = self.model.logger
        values = {k: float(v) for k, v in logger.name_to_value.items() if isinstance(v, (int, float, np.number))}
        return {"values": values, "counts": {k: int(v) for k, v in logger.name_to_count.items()}}

    @property
    def steps(self) -> int:
        """The step count a checkpoint written now records."""
        return self._snapshot["num_timesteps"] if self._snapshot is not None else self.model.num_timesteps

    def save(self, finished: bool = False) -> None:
        if self._snapshot is not None and not finished:
            state = {**self._snapshot, "parameters": self.model.get_parameters()}
        else:
            state = {**algorithm_state(self.model), "logged": self._logged()}
        payload = {**state, "config": self.record, "finished": finished}
        save_checkpoint(self.path, self.kind, payload)


def planned_steps(model: OnPolicyAlgorithm, total: int) -> int:
    """The step count a run of ``total`` steps ends at: SB3 trains whole rollouts (``n_steps`` x envs), so
    the last one may end past ``total``."""
    rollout = model.n_steps * model.get_env().num_envs
    remaining = max(total - model.num_timesteps, 0)
    return model.num_timesteps + -(-remaining // rollout) * rollout


class StepsBar(ProgressBarCallback):
    """SB3's progress bar over the run's steps, from where this session starts (a resumed run's checkpoint)
    to where training really stops: whole rollouts, so a 512-step run of 1,024-step rollouts reads
    1,024/1,024, not 1,024/512."""

    def __init__(self, end: int) -> None:
        super().__init__()
        self.end = end

    def _on_training_start(self) -> None:
        from tqdm import TqdmExperimentalWarning
        from tqdm.rich import tqdm  # SB3's own bar (an extra of its, installed with ours)

        with warnings.catch_warnings():  # "rich is experimental": SB3 silences it the same way
            warnings.simplefilter("ignore", TqdmExperimentalWarning)
            self.pbar = tqdm(total=self.end, initial=self.model.num_timesteps)


class ProgressLines(BaseCallback):
    """A plain line of progress at most every ``every`` seconds (at rollout ends), for output that is not a
    terminal (a pipe, a log file), where a progress bar prints nothing until the end."""

    def __init__(self, total: int, every: float = 60.0) -> None:
        super().__init__()
        self.total, self.every = total, every
        self._last = self._start = 0.0
        self._steps_at_start = 0

    def _on_training_start(self) -> None:
        self._last = self._start = time.monotonic()
        self._steps_at_start = self.num_timesteps

    def _on_rollout_end(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        rate = (self.num_timesteps - self._steps_at_start) / max(now - self._start, 1e-9)
        returns = [episode["r"] for episode in self.model.ep_info_buffer or []]
        recent = f", mean training return {np.mean(returns):.2f}" if returns else ""
        print(f"step {self.num_timesteps:,} of {self.total:,}, {rate:.0f} steps/s{recent}", flush=True)

    def _on_step(self) -> bool:
        return True


@contextmanager
def stop_on_signals(stopper: Checkpointer) -> Iterator[None]:
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


def _check_layout(run_dir: Path) -> None:
    """One line, before any work, where a run folder's entries are not of their kind."""
    for name in ("checkpoints", "tensorboard"):
        if (run_dir / name).exists() and not (run_dir / name).is_dir():
            raise ConfigError(f"{run_dir / name} is a file where the run keeps a folder; move it away")
    for name in ("config.yaml", "progress.csv", "evaluations.npz"):
        if (run_dir / name).is_dir():
            raise ConfigError(f"{run_dir / name} is a folder where the run keeps a file; move it away")


def train(config: TrainConfig) -> dict[str, Any]:
    """Start the run ``config`` describes, in its folder (refused if the folder holds a run already)."""
    if config.run.init_from is not None:
        policy_weights(config.run.init_from)  # read (or refused) before any folder or environment is made
    run_dir = run_dir_for(config)
    with RunLock(run_dir):
        _check_layout(run_dir)
        if (run_dir / CHECKPOINT).exists():
            raise ConfigError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick another seed"
            )
        return _train(config, run_dir, None)


def resume(run_dir: str | Path, overrides: Iterable[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint (or start it, when it stopped before its first
    one), with its saved config and ``overrides`` that leave the experiment the same (:data:`MUTABLE`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    with RunLock(run_dir):
        _check_layout(run_dir)
        saved_config = run_config(run_dir)
        config = run_config(run_dir, overrides)
        check_resume(to_dict(saved_config), to_dict(config), MUTABLE)
        saved = None
        if (run_dir / CHECKPOINT).exists():
            saved = load_checkpoint(run_dir / CHECKPOINT, "train")  # before any environment starts
            check_resume(upgrade_record(saved["config"]), to_dict(config), MUTABLE)
            algorithm = ALGORITHMS[config.algo].__name__
            if saved["algorithm"] != algorithm:
                raise ConfigError(f"{run_dir / CHECKPOINT} holds a {saved['algorithm']} run, not {algorithm}")
            read_evaluations(run_dir / "evaluations.npz")  # a damaged file fails here, before any environment
            if saved.get("finished") and saved["num_timesteps"] >= config.total_steps:
                # Nothing to train: the folder stays as it is (no new model, checkpoint or log files).
                return {"run_dir": str(run_dir), "num_timesteps": saved["num_timesteps"], "finished_before": True}
        return _train(config, run_dir, saved)


def _train(config: TrainConfig, run_dir: Path, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The training itself, in a locked run folder, from scratch or from ``saved`` (a checkpoint)."""
    run = config.run
    device = resolve_device(run.device)
    remove_temporaries(run_dir)  # left by a write that a stop interrupted
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False).encode())
    env = make_env(config.env.settings(), seed=run.seed)
    eval_env = None
    logs = None
    try:
        model = build_model(config, env, device)
        if saved is not None:
            restore_algorithm(model, saved)
        elif run.init_from is not None:
            init_weights(model, run.init_from)
        tracking = start_tracking(config, run_dir) if run.track else None
        start = 0 if saved is None else saved["num_timesteps"]
        # From the checkpoint, or from 0: a folder stopped before its first checkpoint starts afresh, its record too.
        logs = RunLog(run_dir, resume_from=start, tracking=tracking)
        model.set_logger(Logger(folder=str(run_dir), output_formats=[logs]))
        if saved is not None:
            logs.extend(saved.get("pending_logs", ()))  # rows held by a checkpoint of an earlier version
            model.logger.name_to_value.update(saved["logged"]["values"])
            model.logger.name_to_count.update(saved["logged"]["counts"])

        stopper = Checkpointer(run_dir / CHECKPOINT, run.checkpoint_every, to_dict(config), "train")
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
            if saved is not None:
                # Its step counter goes on from the checkpoint, so that a resumed run evaluates at the same
                # multiples of eval_every as one that never stopped.
                evaluator.n_calls = start // env.num_envs
            past = read_evaluations(run_dir / "evaluations.npz") if saved is not None else None
            if past is not None:
                # EvalCallback rewrites evaluations.npz from its own lists: start them with the past, up to
                # the checkpoint (later evaluations are of steps the resumed run trains again).
                kept = past["timesteps"] <= start
                evaluator.evaluations_timesteps = past["timesteps"][kept].tolist()
                evaluator.evaluations_results = past["results"][kept].tolist()
                evaluator.evaluations_length = past["ep_lengths"][kept].tolist()
            callbacks.append(evaluator)

        # A progress bar on a terminal; elsewhere a line a minute (a bar in a pipe says nothing until the end).
        end = planned_steps(model, config.total_steps)
        if run.progress:
            bar = sys.stdout.isatty()
            callbacks.append(StepsBar(end) if bar else ProgressLines(end))
        try:
            with stop_on_signals(stopper):
                model.learn(
                    total_timesteps=max(config.total_steps - model.num_timesteps, 0),
                    callback=CallbackList(callbacks),
                    reset_num_timesteps=saved is None,
                )
            if stopper.signal is None:
                stopper.save(finished=True)
                model.save(run_dir / "model.zip")
        finally:
            if tracking is not None:
                tracking.finish()
        return {
            "run_dir": str(run_dir),
            "num_timesteps": model.num_timesteps if stopper.signal is None else stopper.steps,
            "interrupted_by": stopper.signal,
            "parameters": parameter_count(model),
            "device": str(device),
        }
    finally:
        if logs is not None:
            logs.close()
        env.close()
        if eval_env is not None:
            eval_env.close()


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
        summary = train(config)
        status = "trained"
    if summary["interrupted_by"] is not None:
        raise KeyboardInterrupt(f"{run_dir}: stopped by signal {summary['interrupted_by']}; checkpoint saved")
    return status
