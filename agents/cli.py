"""The ``rims-rl`` command line: each subcommand turns its flags into config overrides and calls a runner.

Flags shared by several commands are declared once, in the parent parsers below. A setting has one route
into a config: ``--set key=value`` (read as YAML, typed from there on) or the flag that names it
(``--device`` is ``run.device`` everywhere, ``--out`` ``run.out``, ``--seed`` ``run.seed``, ...), both
as ``(key, value)`` overrides that the config schema checks (:mod:`rims_rl.agents.config`). Our own errors
(:class:`~rims_rl.agents.config.ConfigError`: bad input, before any work) print one line and exit 2; a run
that cannot go on (:class:`~rims_rl.agents.runs.RunError`: a full disk, a diverged model) one line
and exit 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rims_rl.agents.config import ConfigError, parse_set
from rims_rl.agents.runs import RunError
from rims_rl.envs.registration import EVAL_SPLITS

__all__ = ["build_parser", "main"]

DEVICES = ["auto", "cpu", "cuda"]


# ------------------------------------------------------------------------------------- shared flags


def _config_parent(default: str, example: str = "e.g. --set ppo.n_steps=64") -> argparse.ArgumentParser:
    """``--config`` (with this command's default) and ``--set``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config", default=default, help="YAML config: a file, or a packaged config name (default: %(default)s)"
    )
    parent.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, {example} (repeatable; values are YAML)",
    )
    return parent


def _device_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--device", choices=DEVICES, help="torch device: a GPU when there is one with auto (default: the config's)"
    )
    return parent


def _runs_parent() -> argparse.ArgumentParser:
    """The run folders that ``compare`` and ``report`` read."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding them")
    return parent


def _backend_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: a bounded process pool on this machine; ray: tasks on a Ray cluster (default: %(default)s)",
    )
    parent.add_argument(
        "--address",
        help="with --backend ray: the cluster to join, e.g. auto or HOST:6379 (default: start a local Ray instance)",
    )
    parent.add_argument("--workers", type=int, help="local backend: runs at a time (default: one per CPU core)")
    return parent


def _flags(args: argparse.Namespace, flags: Iterable[tuple[str, str]]) -> list[tuple[str, Any]]:
    """Each flag given, as ``(its config key, value)``."""
    return [(key, getattr(args, attribute)) for attribute, key in flags if getattr(args, attribute, None) is not None]


def _overrides(args: argparse.Namespace, flags: Iterable[tuple[str, str]] = ()) -> list[tuple[str, Any]]:
    """``--set`` as typed ``(key, value)`` pairs, then the given flags (see :func:`_flags`)."""
    return [parse_set(item) for item in args.set] + _flags(args, flags)


# ------------------------------------------------------------------------------------- handlers


def _copying(args: argparse.Namespace) -> int:
    from rims_rl.agents.copying import format_table, load_copying_config, run_copying

    flags = [("device", "run.device"), ("out", "run.out"), ("models", "run.models")]
    overrides = _overrides(args, flags) + ([("run.progress", False)] if args.no_progress else [])
    config = load_copying_config(args.config, overrides)
    results = run_copying(config, resume=args.resume)
    print(format_table(results, config.task.eval_spans))
    print(f"\nresults written to {config.run.out}/results.md and results.json")
    return 0


TRAIN_FLAGS = [
    ("env", "env.id"),
    ("algo", "algo"),
    ("policy", "policy"),
    ("seed", "run.seed"),
    ("total_steps", "total_steps"),
    ("device", "run.device"),
    ("out", "run.out"),
    ("track", "run.track"),
]


# Flags that choose a new run's experiment or folder; a resumed run keeps its own (a config key may be --set,
# and is then checked by the resume contract).
NEW_RUN_ONLY = ("--config", "--env", "--algo", "--policy", "--seed", "--out")


def _train(args: argparse.Namespace) -> int:
    from rims_rl.agents.train import resolve_config, resume, train

    if args.resume:
        # train's parser takes no abbreviations, so a flag given is a token of the command line.
        given = [flag for flag in NEW_RUN_ONLY if any(t == flag or t.startswith(f"{flag}=") for t in args.argv)]
        if given:
            raise ConfigError(
                f"{', '.join(given)} does not apply with --resume: a resumed run keeps its experiment and folder "
                "(--total-steps, --device, --track and --set of the budget, evaluation and checkpoint keys may change)"
            )
        flags = [("total_steps", "total_steps"), ("device", "run.device"), ("track", "run.track")]
        summary = resume(args.resume, _overrides(args, flags))
        if summary.get("finished_before"):
            steps = summary["num_timesteps"]
            print(
                f"{summary['run_dir']} finished at {steps} steps, its total_steps: nothing to train, nothing changed "
                f"(give --total-steps above {steps} to train on)"
            )
            return 0
    else:
        summary = train(resolve_config(args.config, _overrides(args, TRAIN_FLAGS)))
    if summary["interrupted_by"] is not None:
        print(
            f"rims-rl train: stopped by signal {summary['interrupted_by']} at step {summary['num_timesteps']}; "
            f"checkpoint saved. Continue with: rims-rl train --resume {summary['run_dir']}",
            file=sys.stderr,
        )
        return 128 + summary["interrupted_by"]
    counts = summary["parameters"]
    print(
        f"trained {summary['num_timesteps']} steps on {summary['device']}; policy parameters {counts['policy']:,} "
        f"(recurrent core {counts['core']:,}); run folder {summary['run_dir']}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rims_rl.agents.evaluate import evaluate_run

    result = evaluate_run(
        args.run,
        episodes=args.episodes,
        deterministic=args.deterministic,
        video=args.video,
        distractors=args.distractors,
    )
    low, high = result["ci95"]
    run = Path(result["run"])  # <out>/<env>/<label>/seed<N>: the label and seed say which run this is
    where = f"{result['env']}, {run.parent.name} {run.name}"
    where += f" ({result['distractors']} distractors)" if "distractors" in result else ""
    print(
        f"{where}: mean return {result['mean_return']:.2f} (95% CI {low:.2f} to {high:.2f}) "
        f"over {result['episodes']} episodes, mean length {result['mean_length']:.0f}"
    )
    if "success_rate" in result:
        low, high = result["success_ci95"]
        print(f"success rate {result['success_rate']:.3f} (95% CI {low:.3f} to {high:.3f})")
    if "video" in result:
        print(f"video: {result['video']}")
    return 0


def _visualize(args: argparse.Namespace) -> int:
    from rims_rl.agents.visualize import visualize_run

    result = visualize_run(
        args.run, out=args.out, distractors=args.distractors, deterministic=args.deterministic, seed=args.seed
    )
    print(f"{result['steps']} steps, return {result['return']:.2f}; frames: {result['gif']}")
    if "png" in result:
        print(f"active units per step: {result['png']} (mean {result['active_per_step']:.2f} active)")
        if "attention_png" in result:
            print(f"where each unit's input attention falls: {result['attention_png']}")
    else:
        print("the core is not RIMs: frames only")
    return 0


def _show_table(result: dict) -> int:
    """An experiment's Markdown table, then where its files are."""
    print(Path(result["md"]).read_text(), end="")
    print(f"table: {result['md']}; rows: {result['csv']}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from rims_rl.agents.distractors import run_distractors

    try:
        result = run_distractors(
            args.config,
            out=args.out,
            seeds=args.seeds,
            variants=args.variants,
            episodes=args.episodes,
            overrides=_overrides(args, [("total_steps", "total_steps"), ("device", "run.device")]),
            workers=args.workers,
        )
    except KeyboardInterrupt:
        print("rims-rl experiment-distractors: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return _show_table(result)


def _imitation(args: argparse.Namespace) -> int:
    from rims_rl.agents.imitation import STAGES, load_imitation_config, run

    config = load_imitation_config(args.config, _overrides(args, [("device", "run.device"), ("out", "run.out")]))
    out = Path(config.run.out)
    try:
        run(config, out, STAGES if args.stage == "run" else (args.stage,))
    except KeyboardInterrupt:
        print("rims-rl imitation: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    if args.stage in ("run", "evaluate"):
        print((out / "results.md").read_text(), end="")
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from rims_rl.agents.transfer import load_transfer_config, run_transfer

    choices = [
        ("sources", "sources"),
        ("targets", "targets"),
        ("policy", "policies"),
        ("seeds", "seeds"),
        ("source_steps", "source_steps"),
        ("target_steps", "target_steps"),
    ]
    config = load_transfer_config(args.config, _flags(args, choices))
    result = run_transfer(config, args.out, _overrides(args, [("device", "run.device")]))
    return _show_table(result)


def _sweep(args: argparse.Namespace) -> int:
    from rims_rl.agents.sweep import format_table, load_sweep, plan, run_sweep

    sweep = load_sweep(args.config, _overrides(args, [("device", "run.device")]), out=args.out, workers=args.workers)
    if args.dry_run:
        print(plan(sweep))
        return 0
    result = run_sweep(sweep, backend=args.backend, address=args.address)
    print(format_table(result["results"]))
    print(f"summary: {result['json']} and {result['csv']}; logs: sweep.log in each run folder")
    if result["report"]:
        print(f"table over the grid: {result['report']} (curves.png beside it)")
    if result["interrupted"]:
        print("rims-rl sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if result["failed"] else 0


def _ablate(args: argparse.Namespace) -> int:
    from rims_rl.agents.ablation import run_ablation
    from rims_rl.agents.sweep import format_table

    result = run_ablation(
        args.config,
        out=args.out,
        games=args.games,
        seeds=args.seeds,
        all_active=args.all_active,
        no_communication=args.no_communication,
        overrides=_overrides(args, [("total_steps", "total_steps"), ("device", "run.device")]),
        workers=args.workers,
        backend=args.backend,
        address=args.address,
        source=args.source,
        track=args.track,
    )
    print(format_table(result["sweep"]["results"]))
    print(f"grid: {result['file']}; report: {result['report']['md']}")
    if result["sweep"]["interrupted"]:
        print("rims-rl ablate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if result["sweep"]["failed"] else 0


def _compare(args: argparse.Namespace) -> int:
    from rims_rl.agents.compare import compare_runs

    result = compare_runs(args.runs, args.out, source=args.source)
    for env, labels in result["groups"].items():
        print(f"{env}: {', '.join(labels)}")
    for line in result["warnings"]:
        print(line, file=sys.stderr)
    print(f"learning curves: {result['png']} and {result['csv']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from rims_rl.agents.report import write_report

    result = write_report(
        args.runs,
        args.out,
        source=args.source,
        baseline=args.baseline,
        track=args.track,
        reps=args.reps,
        seed=args.seed,
        wandb_project=args.wandb_project,
    )
    for note in result["notes"]:
        print(f"note: {note}")
    figures = [result[name] for name in ("curves", "improvement", "aggregates", "profiles") if name in result]
    print(f"figures: {', '.join(figures)}")
    print(f"table: {result['md']}; rows: {result['csv']}")
    if result["wandb"]:
        print(f"wandb: {result['wandb']}")
    return 0


# ------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rims-rl",
        description="Recurrent Independent Mechanisms for reinforcement learning: experiments from the command line.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    device, runs, backend = _device_parent(), _runs_parent(), _backend_parent()

    copying = commands.add_parser(
        "copying",
        parents=[_config_parent("copying.yaml", "e.g. --set train.updates=200"), device],
        help="train RIMs and an LSTM on the paper's copying task and print a Table-1-shaped report",
        description="Train on the copying task at one dormant span, evaluate at longer spans (paper Table 1).",
    )
    copying.add_argument(
        "--models", nargs="+", metavar="NAME", help="train only these entries of config 'models' (run.models)"
    )
    copying.add_argument("--out", help="output folder (default: the config's run.out)")
    copying.add_argument("--resume", action="store_true", help="continue from the checkpoints in the output folder")
    copying.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    copying.set_defaults(handler=_copying)

    train = commands.add_parser(
        "train",
        parents=[_config_parent("atari/ppo_rims.yaml"), device],
        allow_abbrev=False,
        help="train a recurrent PPO or A2C agent (RIMs or LSTM core) from a YAML config",
        description="Train a recurrent agent. The YAML config holds every default; flags pick among its blocks.",
    )
    train.add_argument("--env", help="environment: an Atari game in any common form (Pong, ALE/Pong-v5) or a gym id")
    train.add_argument("--algo", choices=["ppo", "a2c"], help="algorithm (default: the config's)")
    train.add_argument("--policy", choices=["rims", "lstm"], help="recurrent core (default: the config's)")
    train.add_argument("--seed", type=int, help="random seed; also names the run folder seed<N>")
    train.add_argument("--total-steps", type=int, help="environment steps to train for (with --resume: the new total)")
    train.add_argument("--out", help="root of the run folders <out>/<env>/<algo>-<policy>/seed<N> (default: runs)")
    train.add_argument(
        "--track", action="store_const", const=True, help="log to wandb (offline unless an API key is configured)"
    )
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="play full episodes with a trained agent: mean return and 95%% CI",
        description="Evaluate a run folder (its final model, else its latest checkpoint) or a model file.",
    )
    evaluate.add_argument(
        "run",
        metavar="RUN_OR_MODEL",
        help="a run folder, or a file inside one: the model is rebuilt from its config.yaml and checkpoints/latest.pt",
    )
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to play (default: %(default)s)")
    evaluate.add_argument("--deterministic", action="store_true", help="take the most likely action")
    evaluate.add_argument("--video", action="store_true", help="also save one episode as RUN/videos/episode.gif")
    evaluate.add_argument(
        "--distractors",
        choices=list(EVAL_SPLITS),
        help="RimsRL/Pickup runs: evaluate with known distractors (the training pool), novel ones (never seen, as "
        "many), or crowded (known plus novel, 3-5 in all)",
    )
    evaluate.set_defaults(handler=_evaluate)

    visualize = commands.add_parser(
        "visualize",
        help="one episode as a GIF, with the RIMs units active at each step (and a PNG of the pattern)",
        description="Play one episode; save RUN/visualize/episode.gif and, for a RIMs core, activations.png.",
    )
    visualize.add_argument(
        "run",
        metavar="RUN_OR_MODEL",
        help="a run folder, or a file inside one: the model is rebuilt from its config.yaml and checkpoints/latest.pt",
    )
    visualize.add_argument("--out", help="output folder (default: RUN/visualize)")
    visualize.add_argument("--distractors", choices=list(EVAL_SPLITS), help="RimsRL/Pickup runs: distractor split")
    visualize.add_argument("--deterministic", action="store_true", help="take the most likely action")
    visualize.add_argument("--seed", type=int, default=12_345, help="episode seed (default: %(default)s)")
    visualize.set_defaults(handler=_visualize)

    experiment = commands.add_parser(
        "experiment-distractors",
        parents=[_config_parent("sweeps/pickup_sets.yaml", "e.g. --set total_steps=500000"), device],
        help="RIMs (input set and one row) vs LSTM on MiniGrid pickup: train, evaluate known, novel and crowded "
        "distractors, table + plot",
        description="Train the sweep's runs (--config: a sweep file) on the train split, side by side; evaluate "
        "each on known, novel and crowded distractors; write results.csv, results.md and results.png in the "
        "sweep's out. Finished runs are reused, unfinished ones resumed.",
    )
    experiment.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the sweep's)")
    experiment.add_argument("--variants", nargs="+", help="variants of the sweep to run (default: all)")
    experiment.add_argument("--total-steps", type=int, help="training steps per run (default: the sweep's)")
    experiment.add_argument(
        "--episodes", type=int, default=200, help="evaluation episodes per run and split (default: %(default)s)"
    )
    experiment.add_argument("--out", help="output folder (default: the sweep's out)")
    experiment.add_argument("--workers", type=int, help="runs at a time (default: the sweep's)")
    experiment.set_defaults(handler=_experiment)

    imitation = commands.add_parser(
        "imitation",
        parents=[_config_parent("mujoco/halfcheetah.yaml", "e.g. --set bc.epochs=50"), device],
        help="behaviour cloning on HalfCheetah from pixels, evaluated under joint noise (paper Table 6)",
        description="Stages: expert (state-based SAC or PPO), collect (rendered expert episodes), bc (sequence BC "
        "per model), evaluate (returns with and without joint noise); run = all, skipping finished ones.",
    )
    imitation.add_argument("stage", choices=["expert", "collect", "bc", "evaluate", "run"], help="stage to run")
    imitation.add_argument("--out", help="output folder (default: the config's run.out)")
    imitation.set_defaults(handler=_imitation)

    transfer = commands.add_parser(
        "transfer",
        parents=[
            _config_parent("atari/transfer.yaml", "of the training config in every stage, e.g. --set ppo.n_steps=64"),
            device,
        ],
        help="pre-train on source Atari games, fine-tune on targets, compare with training from scratch",
        description="Paper App. C.12.1: one agent per policy and seed trained on the sources in turn, fine-tuned on "
        "each target; the same budget from scratch is the baseline. All stages use the full 18-action set. Writes "
        "results.csv / results.md (per-game transfer and the count of positive-transfer games). Finished runs are "
        "reused, unfinished ones resumed. --config is the transfer file; --set overrides the training config.",
    )
    transfer.add_argument("--sources", nargs="+", metavar="GAME", help="source games, trained in this order")
    transfer.add_argument("--targets", nargs="+", metavar="GAME", help="target games")
    transfer.add_argument("--policy", nargs="+", choices=["rims", "lstm"], help="cores to compare (default: both)")
    transfer.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the config's)")
    transfer.add_argument("--source-steps", type=int, help="training steps per source game")
    transfer.add_argument("--target-steps", type=int, help="steps per target game, fine-tuned and from scratch")
    transfer.add_argument("--out", default="runs/experiments/transfer", help="output folder (default: %(default)s)")
    transfer.set_defaults(handler=_transfer)

    compare = commands.add_parser(
        "compare",
        parents=[runs],
        help="learning curves (mean and 95%% CI across seeds) of runs, e.g. RIMs vs LSTM",
        description="Group runs by environment and algo-policy; plot mean and 95% CI across seeds.",
    )
    compare.add_argument(
        "--out", default="comparison", help="folder for curves.png and curves.csv (default: %(default)s)"
    )
    compare.add_argument(
        "--source",
        choices=["train", "eval"],
        default="train",
        help="training episode returns (progress.csv) or periodic evaluations (default: %(default)s)",
    )
    compare.set_defaults(handler=_compare)

    report = commands.add_parser(
        "report",
        parents=[runs],
        help="multi-seed report: per-game curves and scores with CIs, improvement over the LSTM, IQM and "
        "performance profiles of human-normalised Atari scores",
        description="Group runs by game and label; write curves.png, improvement.png, aggregates.png and "
        "profiles.png (rliable, human-normalised Atari scores), report.csv and report.md. A run scores the mean "
        "of the last 10% of its evaluations (or training episodes); see docs/design.md, 'Reports'.",
    )
    report.add_argument("--out", default="report", help="folder for the report's files (default: %(default)s)")
    report.add_argument(
        "--source",
        choices=["train", "eval"],
        default="eval",
        help="score runs on periodic evaluations (evaluations.npz) or training episodes (progress.csv) "
        "(default: %(default)s)",
    )
    report.add_argument(
        "--baseline", metavar="LABEL", help="label to measure improvements against (default: the one containing lstm)"
    )
    report.add_argument(
        "--reps",
        type=int,
        default=2000,
        help="stratified-bootstrap resamples for the aggregates' and profiles' CIs (default: %(default)s)",
    )
    report.add_argument("--seed", type=int, default=0, help="seed of those bootstrap resamples (default: %(default)s)")
    report.add_argument(
        "--track", action="store_true", help="also log the figures and tables to wandb (offline unless a key is set)"
    )
    report.add_argument("--wandb-project", default="rims-rl", help="wandb project for --track (default: %(default)s)")
    report.set_defaults(handler=_report)

    sweep_config = argparse.ArgumentParser(add_help=False)
    sweep_config.add_argument(
        "--config", required=True, help="sweep YAML: a file, or a packaged name such as sweeps/atari_rims_vs_lstm.yaml"
    )
    sweep_config.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training-config value in every run (repeatable; values are YAML)",
    )
    sweep = commands.add_parser(
        "sweep",
        parents=[sweep_config, device, backend],
        help="train a grid of runs (games x seeds x variants) in a local process pool or on Ray",
        description="Expand a sweep file's grid and variants into training runs, check them all, then bring each "
        "to completion: finished runs are skipped, unfinished ones resumed from their checkpoints, a failed run is "
        "reported without stopping the others. Writes OUT/sweep.json and sweep.csv; exit code 1 if a run failed.",
    )
    sweep.add_argument("--out", help="output root for the run folders and the summary (default: the sweep's out)")
    sweep.add_argument("--dry-run", action="store_true", help="print the expanded grid and what each run would do")
    sweep.set_defaults(handler=_sweep)

    ablate = commands.add_parser(
        "ablate",
        parents=[
            _config_parent("sweeps/atari_ablation.yaml", "of the training config, e.g. --set env.n_envs=4"),
            device,
            backend,
        ],
        help="RIMs vs RIMs without input attention vs LSTM (paper Fig. 25): a sweep, then one report",
        description="Train the ablation grid (games x seeds x variants, identical PPO settings) as a sweep, then "
        "write one report over its runs to OUT/report. The grid that ran is saved as OUT/ablation.yaml. --config "
        "is the ablation's sweep file; --set overrides the training config.",
    )
    ablate.add_argument("--games", nargs="+", metavar="GAME", help="environments (default: the file's env.id list)")
    ablate.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the file's run.seed list)")
    ablate.add_argument("--all-active", action="store_true", help="add the k_active = num_units variant")
    ablate.add_argument("--no-communication", action="store_true", help="add the RIMs-without-communication variant")
    ablate.add_argument("--total-steps", type=int, help="training steps per run (default: the training config's)")
    ablate.add_argument("--out", help="output folder (default: the file's out)")
    ablate.add_argument(
        "--source",
        choices=["eval", "train"],
        default="eval",
        help="report scores from periodic evaluations or training episodes (default: %(default)s)",
    )
    ablate.add_argument("--track", action="store_true", help="also send the report to wandb (offline without a key)")
    ablate.set_defaults(handler=_ablate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"rims-rl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RunError as error:  # a full disk, a diverged model: the last good checkpoint is kept
        print(f"rims-rl {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rims-rl {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
