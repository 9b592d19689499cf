"""Sweeps: a grid of training runs (games x seeds x variants) brought to completion, locally or on Ray.

A sweep file (YAML, e.g. ``configs/sweeps/atari_rims_vs_lstm.yaml``) names one training config and
lists only what the sweep changes in it::

    config: atari/ppo_rims.yaml          # base training config: a file, or a packaged name
    out: runs/sweeps/atari_rims_vs_lstm  # run.out of every run; sweep.json / sweep.csv land here too
    grid:                                # config key -> values; the sweep is their cartesian product
      env.id: [Pong, Breakout]
      run.seed: [0, 1, 2]
    variants:                            # optional; name -> overrides. The name becomes run.label, so
      rims: {}                           # each variant has its own folder and its own curve in reports
      lstm: {policy: lstm}
    overrides: {run.progress: false}     # optional; applied to every run
    workers: null                        # optional; local backend: runs at a time (null: CPU cores)
    gpus_per_run: 1                      # optional; Ray backend: GPUs per run when runs use a GPU

Runs are the product grid x variants, in file order (variants innermost). A run's training config is
the base config with, in order: ``overrides``, its grid values, its variant's overrides, the command
line's overrides (``--set``, and ``--device`` as ``run.device``), then ``run.out`` and ``run.label`` (the
variant name). A key may be set
by only one of ``overrides``, ``grid`` and the variants (``--set`` may override anything except
``run.out`` and ``run.label``, which the sweep owns). Everything is checked before any run starts: the
file's keys and types, and every expanded config through ``resolve_config``; two runs that would share
a folder (``<out>/<env>/<label>/seed<N>``) are an error too.

Each run goes through :func:`run_one`: it skips a run that has its ``model.zip``, else starts a fresh
Python process that calls ``ensure_run`` (resume from ``checkpoints/latest.pt``, or train from scratch),
with its output appended to ``<run folder>/sweep.log`` and one torch/OMP thread. Re-running a sweep is
therefore idempotent. A finished run is never extended: raising ``total_steps`` later does not touch
runs that have their ``model.zip`` (``rims-rl train --resume`` does that), and a resumed run continues
with the ``config.yaml`` saved in its folder, only ``total_steps`` taken from the sweep.

Backends:

- ``local`` (default): a pool of ``workers`` threads, each waiting on one run's child process. A child
  process per run, rather than a ``ProcessPoolExecutor``, because a run that crashes hard (out of
  memory, a segfault in an environment) would break such a pool and fail every run queued behind it;
  here it fails alone. Runs on ``cuda`` share the machine's GPU (lower ``workers`` if memory is short).
- ``ray``: the same :func:`run_one` as Ray tasks (``num_cpus=1``; ``num_gpus=gpus_per_run`` for runs
  whose device is ``cuda``, or ``auto`` on a cluster with GPUs, since Ray hides GPUs from tasks that
  ask for none). ``ray.init(address)`` joins a cluster (``workers`` is then unused: Ray schedules by
  the cluster's CPUs), else a local instance with ``workers`` CPUs is started. On a cluster every node
  needs rims-rl installed at the driver's Python path and the driver's working directory on shared
  storage (run folders are plain files).

Ctrl-C or SIGTERM stops a sweep on either backend: running runs save a checkpoint and stop (status
``interrupted``), queued runs do not start, exit code 130, and the same command resumes them. A run
process whose runner dies (a killed sweep, a lost Ray worker) gets SIGTERM too, so no run trains on
unattended.

At the end, ``<out>/sweep.json`` and ``sweep.csv`` hold each run's status (``done``: finished before,
``resumed``, ``trained``, ``failed`` with the error's last line, ``interrupted``, ``not started``),
time and folder.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rims_rl.agents.config import ConfigError, SweepConfig, load, resolve_path, to_dict
from rims_rl.agents.runs import check_writable, read_rows, run_dir_for, run_state

__all__ = [
    "Sweep",
    "SweepRun",
    "check_backend",
    "format_table",
    "load_sweep",
    "plan",
    "run_one",
    "run_sweep",
]

# The sweep decides these for every run: the output root and, through the variant's name, the label.
RESERVED_KEYS = ("run.out", "run.label")
LOG_NAME = "sweep.log"
# Ray backend: created in the sweep's out by an interrupted driver; every task then stops its run.
STOP_NAME = "sweep.stop"
# The child process's last line: "<RESULT_MARK><status>[: <message>]", read back from the log.
RESULT_MARK = "rims-rl sweep result: "
STATUSES = ("done", "resumed", "trained", "failed", "interrupted", "not started")


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its checked training config and where it lives."""

    name: str  # the run folder relative to the sweep's out: <env>/<label>/seed<N>
    run_dir: str  # absolute, so that a Ray worker with another working directory finds it
    config: dict[str, Any]
    settings: dict[str, Any]  # what distinguishes it: its grid values and variant
    cwd: str  # the driver's working directory: relative paths in the config are relative to it
    command: str = "train"  # what runs it: train or copying


@dataclass
class Sweep:
    """A checked, expanded sweep file."""

    path: str
    out: str
    command: str
    runs: list[SweepRun]
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]]
    workers: int
    gpus_per_run: float = 1.0


# ------------------------------------------------------------------------------------- loading


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_sweep(
    path: str | Path | Mapping[str, Any],
    overrides: Sequence[tuple[str, Any]] = (),
    *,
    out: str | Path | None = None,
    workers: int | None = None,
    name: str | None = None,
) -> Sweep:
    """Read, check and expand a sweep file; raises ``ConfigError`` (one line) before anything runs.

    Args:
        path: the sweep YAML, a file or a packaged name such as ``sweeps/atari_rims_vs_lstm.yaml``, or
            its contents as a mapping.
        overrides: ``(key, value)`` pairs applied to every run's training config after the sweep's own
            (the command line's ``--set``, and ``--device`` as ``run.device``).
        out: replaces the file's ``out``.
        workers: replaces the file's ``workers`` (local backend).
        name: what messages call the sweep when ``path`` is a mapping (the file it came from).
    """
    file = path if isinstance(path, Mapping) else resolve_path(path)
    choices = [("out", str(out))] if out is not None else []
    choices += [("workers", workers)] if workers is not None else []
    spec = load(SweepConfig, file, choices)
    file = (name or "the sweep") if isinstance(path, Mapping) else file
    variants = {name: settings or {} for name, settings in (spec.variants or {}).items()}
    common = spec.overrides or {}

    # Each key in one place: a grid key also set by a variant or by overrides would be ambiguous.
    owners: dict[str, str] = {}
    sources = [("overrides", common), ("grid", spec.grid)] + [(f"variants.{n}", v) for n, v in variants.items()]
    for source, settings in sources:
        for key in settings:
            if key in RESERVED_KEYS:
                raise ConfigError(f"{file}: {source} sets {key}, which the sweep sets (out, variant names)")
            other = owners.get(key)
            if other is not None and not (other.startswith("variants.") and source.startswith("variants.")):
                raise ConfigError(f"{file}: {key} is set by both {other} and {source}; set it in one place")
            owners[key] = source
    for key, _ in overrides:
        if key in RESERVED_KEYS:
            raise ConfigError(f"--set {key}: the sweep sets it (use --out, or name variants in the sweep file)")

    cwd = os.getcwd()
    runs: list[SweepRun] = []
    folders: dict[Path, str] = {}
    for values in itertools.product(*spec.grid.values()):
        point = dict(zip(spec.grid, values, strict=True))
        for variant in variants or [None]:
            settings = {**point, **({"variant": variant} if variant is not None else {})}
            items = [
                *common.items(),
                *point.items(),
                *(variants[variant].items() if variant is not None else ()),
                *overrides,
            ]
            described = ", ".join(f"{k}={v}" for k, v in settings.items())
            try:
                config, folder = _place(spec.command, spec.config, items, spec.out, variant)
            except ConfigError as error:
                raise ConfigError(f"{file}: run {described}: {error}") from None
            if folder in folders:
                raise ConfigError(
                    f"{file}: runs {folders[folder]} and {described} would share the folder {folder}; "
                    "tell them apart with variants (their names label the folders)"
                )
            folders[folder] = described
            runs.append(
                SweepRun(
                    name=folder.relative_to(spec.out).as_posix(),
                    run_dir=os.path.abspath(folder),
                    config=to_dict(config),
                    settings=settings,
                    cwd=cwd,
                    command=spec.command,
                )
            )
    return Sweep(
        path=str(file),
        out=spec.out,
        command=spec.command,
        runs=runs,
        grid=spec.grid,
        variants=variants,
        workers=spec.workers or _cpu_count(),
        gpus_per_run=spec.gpus_per_run or 1.0,
    )


def _place(command: str, base: str, items: list[tuple[str, Any]], out: str, variant: str | None):
    """A run's typed config and its folder: a training run's ``<out>/<env>/<label>/seed<N>`` (``run.out``
    and ``run.label`` set by the sweep), a copying run's ``<out>/<variant>/seed<N>`` (its ``run.out``)."""
    if command == "train":
        from rims_rl.agents.train import resolve_config

        labelled = [*items, ("run.out", out), *([("run.label", variant)] if variant is not None else [])]
        config = resolve_config(base, labelled)
        return config, run_dir_for(config)
    from rims_rl.agents.copying import load_copying_config

    config = load_copying_config(base, items)
    folder = Path(out) / (variant or "copying") / f"seed{config.run.seed}"
    config.run.out = str(folder)
    return config, folder


def _state(run: SweepRun) -> str:
    """``done``, ``resume`` or ``train``: what bringing the run to completion means now."""
    if run.command == "train":
        return run_state(run.run_dir)
    from rims_rl.agents.copying import copying_state

    return copying_state(run.run_dir)


def plan(sweep: Sweep) -> str:
    """The expanded grid, one line per run with what a sweep would do with it (``--dry-run``)."""
    shape = [f"{len(values)} {key}" for key, values in sweep.grid.items()]
    if sweep.variants:
        shape.append(f"{len(sweep.variants)} variants")
    lines = [f"{len(sweep.runs)} runs ({' x '.join(shape)}) in {sweep.out}"]
    width = max(len(run.name) for run in sweep.runs)
    for run in sweep.runs:
        described = " ".join(f"{k}={v}" for k, v in run.settings.items())
        lines.append(f"  {run.name:<{width}}  {_state(run):<6}  {described}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- one run


def _result(run: SweepRun, status: str, seconds: float, error: str | None = None) -> dict[str, Any]:
    return {
        "run": run.name,
        "status": status,
        "seconds": round(seconds, 1),
        "error": error,
        "run_dir": run.run_dir,
        "log": str(Path(run.run_dir) / LOG_NAME),
        "settings": run.settings,
    }


def _last_lines(path: Path, start: int) -> list[str]:
    with open(path, "rb") as handle:
        handle.seek(max(start, os.path.getsize(path) - 16_384))
        text = handle.read().decode("utf-8", errors="replace")
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def run_one(run: SweepRun, stop: threading.Event | None = None, stop_file: str | None = None) -> dict[str, Any]:
    """Bring one run to completion in a child process; never raises for a failed run.

    Returns its result row (``status``: done, resumed, trained, failed, interrupted or not started).
    The child's output is appended to ``<run folder>/sweep.log``. Once ``stop`` is set or ``stop_file``
    exists (or this call is interrupted), the child gets SIGTERM: it saves a checkpoint and stops; a run
    not started yet is not started. The local backend calls this in threads, the Ray backend as tasks.
    """

    def stopping() -> bool:
        return (stop is not None and stop.is_set()) or (stop_file is not None and os.path.exists(stop_file))

    started = time.monotonic()
    folder = Path(run.run_dir)
    if _state(run) == "done":  # spares a child process its imports
        return _result(run, "done", 0.0)
    if stopping():
        return _result(run, "not started", 0.0)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / LOG_NAME
    environment = {
        **os.environ,
        # One thread per run: a sweep runs one run per core, and small-batch RL gains little from more.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",  # keeps stdout and a traceback on stderr in order in the log
    }
    payload = {"command": run.command, "config": run.config, "run_dir": run.run_dir, "parent": os.getpid()}
    payload = json.dumps(payload)
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} rims-rl sweep: {run.name} ===\n")
        log.flush()
        start = log.tell()
        child = subprocess.Popen(
            [sys.executable, "-m", "rims_rl.agents.sweep"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=run.cwd,
            env=environment,
            text=True,
        )
        try:
            try:
                child.stdin.write(payload)
                child.stdin.close()
            except BrokenPipeError:  # the child died at once; its log says why
                pass
            signalled = False
            while True:
                try:
                    code = child.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if not signalled and stopping():
                        child.send_signal(signal.SIGTERM)
                        signalled = True
        except BaseException:
            # Interrupted (Ray's cancel, Ctrl-C in a caller): the child checkpoints, then we go.
            child.send_signal(signal.SIGTERM)
            child.wait()
            raise
    seconds = time.monotonic() - started
    lines = _last_lines(log_path, start)
    reported = next((line[len(RESULT_MARK) :] for line in reversed(lines) if line.startswith(RESULT_MARK)), None)
    if reported is not None:
        status, _, message = reported.partition(": ")
        if status in STATUSES:
            return _result(run, status, seconds, message or None)
    if code in (-signal.SIGTERM, -signal.SIGINT, 130):
        return _result(run, "interrupted", seconds, f"stopped by signal before training started (exit {code})")
    last = lines[-1] if lines else "no output"
    return _result(run, "failed", seconds, f"exit code {code}: {last}")


def _stop_with_parent(parent: int) -> None:
    """SIGTERM this process (checkpoint, then stop) when the process that started it dies.

    A run must not outlive its runner: a Ray worker that is killed (a cancelled task, a lost node) would
    otherwise leave it training into a folder that a retried task then trains into as well.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child_main() -> int:
    """The child process of :func:`run_one`: the run's config as JSON on stdin, the result as the last line."""
    payload = json.loads(sys.stdin.read())
    _stop_with_parent(payload["parent"])
    try:
        # inside: Ctrl-C during the imports is an interruption too
        if payload["command"] == "train":
            from rims_rl.agents.train import ensure_run, resolve_config

            status = ensure_run(resolve_config(payload["config"]))
        else:
            from rims_rl.agents.copying import ensure_copying, load_copying_config

            status = ensure_copying(load_copying_config(payload["config"]))
    except KeyboardInterrupt as error:
        print(f"{RESULT_MARK}interrupted: {error or 'stopped; the last checkpoint is kept'}", flush=True)
        return 130
    except Exception as error:
        traceback.print_exc()
        lines = str(error).strip().splitlines()
        message = f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
        print(f"{RESULT_MARK}failed: {message}", flush=True)
        return 1
    print(f"{RESULT_MARK}{status}", flush=True)
    return 0


# ------------------------------------------------------------------------------------- backends


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _progress(result: dict[str, Any], finished: int, total: int) -> str:
    note = f": {result['error']}" if result["error"] else ""
    return f"[{finished}/{total}] {result['run']}: {result['status']} ({result['seconds']:.0f}s){note}"


def _run_local(sweep: Sweep, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], bool]:
    stop = threading.Event()
    results: dict[int, dict[str, Any]] = {}
    interrupted = False
    with ThreadPoolExecutor(max_workers=min(sweep.workers, len(sweep.runs))) as pool:
        futures = {pool.submit(run_one, run, stop): index for index, run in enumerate(sweep.runs)}
        try:
            pending = set(futures)
            while pending:
                # A line a minute on the runs in progress, so that a sweep's output (often a log file) shows
                # it is alive between the runs' ends.
                finished, pending = wait(pending, timeout=HEARTBEAT_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = futures[future]
                    results[index] = _outcome(future, sweep.runs[index])
                    log(_progress(results[index], len(results), len(sweep.runs)))
                if not finished:
                    log(_heartbeat([sweep.runs[futures[f]] for f in pending if f.running()]))
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            log("interrupted: running runs save a checkpoint and stop; queued runs do not start")
            for future, index in futures.items():
                if index not in results:
                    results[index] = _outcome(future, sweep.runs[index])  # quick once stop is set
    return [results[index] for index in range(len(sweep.runs))], interrupted


HEARTBEAT_SECONDS = 60.0


def _heartbeat(running: list[SweepRun]) -> str:
    """Where each running run is: the last step its live log holds."""
    parts = []
    for run in running:
        try:
            rows = read_rows(Path(run.run_dir) / "progress.csv")
            step = rows[-1].get("time/total_timesteps") if rows else None
        except ConfigError:
            step = None
        total = run.config.get("total_steps")
        parts.append(f"{run.name} at {int(float(step)):,}" + (f" of {total:,}" if total else "") if step else run.name)
    return "running: " + ("; ".join(parts) if parts else "nothing yet")


def _outcome(future: Future, run: SweepRun) -> dict[str, Any]:
    try:
        return future.result()
    except Exception as error:  # run_one itself failed (an unwritable run folder, ...): that run fails alone
        return _result(run, "failed", 0.0, f"{type(error).__name__}: {error}")


def _ray_module():
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray: install the ray extra: pip install -e '.[ray]' (or make test-ray)") from None
    return ray


def _run_ray(sweep: Sweep, address: str | None, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], bool]:
    ray = _ray_module()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, include_dashboard=False)
        else:
            ray.init(num_cpus=sweep.workers, include_dashboard=False)
        if threading.current_thread() is threading.main_thread():
            # ray.init installs a SIGTERM handler that exits at once: stop the way Ctrl-C does instead.
            signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        requests = []
        for run in sweep.runs:
            device = str(run.config["run"]["device"])
            if device.startswith("cuda") and not cluster_gpus:
                raise ConfigError(f"run {run.name}: run.device is {device}, but the Ray cluster has no GPUs")
            wants_gpu = device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)
            requests.append(sweep.gpus_per_run if wants_gpu else 0)
        stop_file = Path(sweep.out).resolve() / STOP_NAME
        stop_file.unlink(missing_ok=True)  # left by an earlier sweep that was stopped
        # Ray's default retries cover a lost worker or node; a run that raises is reported, not retried.
        task = ray.remote(num_cpus=1)(run_one)
        pending = {
            task.options(num_gpus=gpus).remote(run, None, str(stop_file)): index
            for index, (run, gpus) in enumerate(zip(sweep.runs, requests, strict=True))
        }
        results: dict[int, dict[str, Any]] = {}
        interrupted = False
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ready[0])
                results[index] = _ray_result(ray, ready[0], sweep.runs[index])
                log(_progress(results[index], len(results), len(sweep.runs)))
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: running runs save a checkpoint and stop; queued runs do not start")
            # Ray's cancel does not reach a task that waits on its run process, and a forced one kills the
            # run without a checkpoint. The stop file tells every task to stop its run (SIGTERM) or not
            # start it, as the local backend's event does.
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.touch()
            for ref, index in pending.items():
                results[index] = _ray_result(ray, ref, sweep.runs[index], cancelled=True)
            stop_file.unlink(missing_ok=True)
        return [results[index] for index in range(len(sweep.runs))], interrupted
    finally:
        if started_here:
            ray.shutdown()


def _ray_result(ray, ref, run: SweepRun, cancelled: bool = False) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except Exception as error:  # the task itself failed (cancelled, worker lost, ...), not the training run
        if cancelled:
            return _result(run, "interrupted", 0.0, f"{type(error).__name__}; its last checkpoint is kept")
        lines = str(error).strip().splitlines()
        return _result(run, "failed", 0.0, f"{type(error).__name__}: {lines[-1] if lines else ''}")


# ------------------------------------------------------------------------------------- summary


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Each run's folder, status, time and error, as an aligned text table with a count line."""
    width = max([len("run"), *(len(r["run"]) for r in results)])
    lines = [f"{'run':<{width}}  {'status':<11}  {'time':>6}  error", "-" * (width + 30)]
    for r in results:
        lines.append(f"{r['run']:<{width}}  {r['status']:<11}  {r['seconds']:>5.0f}s  {r['error'] or ''}".rstrip())
    counts = {status: sum(r["status"] == status for r in results) for status in STATUSES}
    lines.append(f"{len(results)} runs: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n))
    return "\n".join(lines)


def _write_summary(sweep: Sweep, results: list[dict[str, Any]], backend: str) -> tuple[Path, Path]:
    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "sweep": sweep.path,
        "backend": backend,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "counts": {status: sum(r["status"] == status for r in results) for status in STATUSES},
        "runs": results,
    }
    json_path, csv_path = out / "sweep.json", out / "sweep.csv"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    keys = list(dict.fromkeys(key for r in results for key in r["settings"]))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", *keys, "status", "seconds", "error", "run_dir", "log"])
        for r in results:
            settings = [r["settings"].get(key, "") for key in keys]
            writer.writerow([r["run"], *settings, r["status"], r["seconds"], r["error"] or "", r["run_dir"], r["log"]])
    return json_path, csv_path


def check_backend(backend: str, address: str | None = None) -> None:
    """``ConfigError`` (one line) unless the backend can run: before anything is written or started."""
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend must be local or ray, got {backend!r}")
    if address and backend != "ray":
        raise ConfigError("--address is for --backend ray")
    if backend == "ray":
        _ray_module()


def run_sweep(
    sweep: Sweep, backend: str = "local", address: str | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every run of ``sweep`` (``local`` process pool or ``ray``) and write sweep.json / sweep.csv.

    Returns ``{"results": rows in grid order, "failed": count, "interrupted": bool, "json", "csv"}``.
    Ctrl-C or SIGTERM stops the sweep after the running runs have saved a checkpoint.
    """
    check_backend(backend, address)
    check_writable(sweep.out)
    log(f"sweep {sweep.path}: {len(sweep.runs)} runs in {sweep.out}, backend {backend}")
    in_main = threading.current_thread() is threading.main_thread()
    # SIGTERM (a scheduler's stop) stops the sweep the way Ctrl-C does: checkpoints first.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        if backend == "local":
            results, interrupted = _run_local(sweep, log)
        else:
            results, interrupted = _run_ray(sweep, address, log)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    json_path, csv_path = _write_summary(sweep, results, backend)
    report = _copying_report(sweep) if sweep.command == "copying" else None
    return {
        "results": results,
        "failed": sum(r["status"] == "failed" for r in results),
        "interrupted": interrupted,
        "json": str(json_path),
        "csv": str(csv_path),
        "report": report,
    }


def _copying_report(sweep: Sweep) -> str | None:
    """One table and one plot over the grid's finished copying runs, in the sweep's out."""
    from rims_rl.agents.copying import collect_results, write_report

    rows = collect_results(Path(run.run_dir) for run in sweep.runs)
    if not rows:
        return None
    spans = [int(span) for span in sweep.runs[0].config["task"]["eval_spans"]]
    write_report(rows, spans, Path(sweep.out), title=Path(sweep.path).stem)
    return str(Path(sweep.out) / "results.md")


if __name__ == "__main__":
    sys.exit(_child_main())
