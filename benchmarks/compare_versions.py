"""Two versions of rims-rl benchmarked side by side in one run: alternating processes, medians and noise.

    python benchmarks/compare_versions.py --baseline CHECKOUT [--bench core|train] [--rounds 3] [-- ARGS]

``make bench-compare BASE=<rev>`` makes the baseline checkout (a git worktree with its own ``.venv``) and runs
both benchmarks. Each round runs each version's own ``benchmarks/bench_<bench>.py`` with its own
``.venv/bin/python`` (each version measured as it is used), one after the other, alternating which goes
first, so that drifts in the machine's speed hit both alike. Every row of the Markdown tables they print is
read; per row and column this prints each version's median over the rounds, their ratio, and each
version's spread over the rounds (max / min - 1): the noise that a difference has to exceed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^\s*([0-9][0-9,]*\.?[0-9]*)\s*(ms|s)?\s*$")


def run(checkout: Path, bench: str, args: list[str]) -> dict[tuple[str, str], float]:
    """One run of a checkout's benchmark: ``{(row, column): value}`` from its Markdown table."""
    python = checkout / ".venv" / "bin" / "python"
    script = checkout / "benchmarks" / f"bench_{bench}.py"
    env = {**os.environ, "RIMS_RL_BUILD_DIR": str(checkout / ".build")}
    result = subprocess.run(
        [str(python), str(script), *args], cwd=checkout, env=env, capture_output=True, text=True, check=True
    )
    values, header = {}, None
    for line in result.stdout.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " "}:
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if header is None or not any(NUMBER.match(cell) for cell in cells[1:]):
            header = cells
            continue
        for column, cell in zip(header[1:], cells[1:], strict=False):
            match = NUMBER.match(cell)
            if match:
                values[cells[0], column] = float(match.group(1).replace(",", ""))
    if not values:
        raise SystemExit(f"{script} printed no table:\n{result.stdout}\n{result.stderr}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, type=Path, help="the other checkout (with its own .venv)")
    parser.add_argument("--bench", choices=["core", "train"], default="core", help="which benchmark")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="after --: arguments for both benchmark scripts")
    options = parser.parse_args()
    extra = options.args[1:] if options.args[:1] == ["--"] else options.args
    versions = {"baseline": options.baseline.resolve(), "this": HERE}
    samples: dict[str, dict[tuple[str, str], list[float]]] = {name: defaultdict(list) for name in versions}
    for round_ in range(options.rounds):
        order = list(versions) if round_ % 2 == 0 else list(reversed(versions))
        for name in order:
            for key, value in run(versions[name], options.bench, extra).items():
                samples[name][key].append(value)
        print(f"round {round_ + 1}/{options.rounds} done", file=sys.stderr, flush=True)

    def noise(values: list[float]) -> str:
        return f"{max(values) / min(values) - 1:.1%}" if min(values) > 0 else "-"

    lines = [
        f"bench_{options.bench}, {options.rounds} alternating rounds; baseline {versions['baseline']}, this {HERE}",
        "",
        "| row | column | baseline | this | this / baseline | noise baseline | noise this |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in samples["this"]:
        if key not in samples["baseline"] or key[1].lower() in ("ratio",) or "vs" in key[1]:
            continue
        base, this = samples["baseline"][key], samples["this"][key]
        b, t = statistics.median(base), statistics.median(this)
        ratio = f"{t / b:.3f}" if b else "-"
        lines.append(f"| {key[0]} | {key[1]} | {b:g} | {t:g} | {ratio} | {noise(base)} | {noise(this)} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
