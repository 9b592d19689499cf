"""The ``rims-rl`` command line. Each subcommand loads a YAML config and hands it to a runner."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rims_rl.config import ConfigError, load_config

__all__ = ["main"]


def _copying(args: argparse.Namespace) -> int:
    from rims_rl.agents.copying import format_table, run_copying

    # Model settings are keyword arguments of the core: RIMs checks them itself.
    config = load_config(args.config, args.set, open_sections=[f"models.{m}" for m in ("rims", "lstm")])
    if args.models:
        unknown = sorted(set(args.models) - set(config["models"]))
        if unknown:
            raise ConfigError(f"--models: unknown {', '.join(unknown)}; the config has {', '.join(config['models'])}")
        config["models"] = {name: config["models"][name] for name in args.models}
    results = run_copying(config, args.out, resume=args.resume, progress=not args.no_progress)
    print(format_table(results, [int(span) for span in config["task"]["eval_spans"]]))
    print(f"\nresults written to {args.out}/results.md and results.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rims-rl",
        description="Recurrent Independent Mechanisms for reinforcement learning: experiments from the command line.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    copying = commands.add_parser(
        "copying",
        help="train RIMs and an LSTM on the paper's copying task and print a Table-1-shaped report",
        description="Train on the copying task at one dormant span, evaluate at longer spans (paper Table 1).",
    )
    copying.add_argument(
        "--config", default="copying.yaml", help="YAML config: a file, or a packaged config name (default: %(default)s)"
    )
    copying.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.updates=200 (repeatable; values are YAML)",
    )
    copying.add_argument("--models", nargs="+", metavar="NAME", help="train only these entries of config 'models'")
    copying.add_argument("--out", default="runs/copying", help="output folder (default: %(default)s)")
    copying.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    copying.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    copying.set_defaults(handler=_copying)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, ValueError) as error:
        print(f"rims-rl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rims-rl {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
