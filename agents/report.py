"""Multi-seed reports over many games, shaped like the RIMs paper's Atari figures (``rims-rl report``).

Runs are grouped by environment ("game") and label (``rims_rl.agents.runs.run_label``: ``run.label`` or
``<algo>-<policy>``), as ``rims-rl compare`` groups them. Definitions:

- **Run score.** The mean of the last 10% of the points of a run's learning curve (at least the last one):
  with ``source="eval"`` the points are the periodic evaluations (``evaluations.npz``; with ten or fewer
  evaluations, the final one's mean return); with ``source="train"`` they are ``rollout/ep_rew_mean`` rows
  of ``progress.csv`` (each already a mean over the last 100 training episodes).
- **Per game and label.** The mean of the run scores over seeds, with a 95% percentile-bootstrap CI of that
  mean (``rims_rl.agents.stats.mean_ci``; one seed gives a zero-width interval).
- **Human-normalised score** (Atari games with reference scores, ``rims_rl.envs.atari_scores``):
  ``(score - random) / (human - random)``, so 0 plays like a random agent and 1 like the human reference.
  Other games and non-Atari environments get none; the report says which.
- **Relative improvement** of a label over the baseline label on a game, from the per-game means:
  ``(variant - baseline) / (max(variant, baseline) - random)`` for Atari games with reference scores, else
  (and when both scores are at or below random) ``(variant - baseline) / |baseline|``; undefined when that
  denominator is 0. Shown in percent. The baseline is ``baseline`` if given, else the label containing
  "lstm" (the first in sorted order, with a note, when several do).
- **Aggregates** (rliable, Agarwal et al. 2021): IQM, median, mean and optimality gap (threshold 1) of the
  human-normalised run scores, with stratified-bootstrap 95% CIs, and score-distribution performance profiles
  (fraction of runs scoring above tau) with CIs. They cover the games with reference scores that every label
  has runs on, so all labels are compared on the same games. rliable needs a runs x games matrix per label:
  a label with unequal seed counts across those games contributes its smallest count on every game, taking
  the lowest-numbered seeds. Games and runs left out are named in the notes.

Outputs in ``out``: ``curves.png`` / ``curves.csv`` (one panel per game, mean and 95% CI across seeds per
label), ``improvement.png`` (with a baseline and another label), ``aggregates.png``, ``aggregates.csv`` and
``profiles.png`` (with human-normalised scores), ``report.csv`` (one row per game and label) and ``report.md``
(the tables, figures and notes). With ``track=True`` the tables and figures also go to one wandb run (group
"report"; offline unless an API key is configured); a failing wandb only warns.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rims_rl.agents.compare import plot_curves
from rims_rl.agents.config import MUTABLE, ConfigError
from rims_rl.agents.runs import check_writable, find_runs, first_difference, learning_curve, read_config, run_label
from rims_rl.agents.stats import interval_estimates, mean_ci
from rims_rl.envs import env_kind, env_name
from rims_rl.envs.atari_scores import ATARI_REFERENCE_SCORES, human_normalized

__all__ = [
    "METRICS",
    "GameScore",
    "RunScore",
    "aggregate_metrics",
    "load_run_scores",
    "relative_improvement",
    "run_score",
    "write_report",
]

TAIL = 10  # a run is scored on the last 1/TAIL of its curve
METRICS = ("IQM", "Median", "Mean", "Optimality gap")
PROFILE_POINTS = 101


@dataclass
class RunScore:
    """One run folder: where it belongs and its score."""

    path: Path
    env: str
    label: str
    seed: int
    atari: bool
    steps: np.ndarray
    returns: np.ndarray
    score: float


@dataclass
class GameScore:
    """The runs of one label on one game, summarised across seeds."""

    env: str
    label: str
    seeds: list[int]
    mean: float
    low: float
    high: float
    normalized: tuple[float, float, float] | None  # (mean, low, high) human-normalised
    improvement: float | None = None  # over the baseline, as a fraction


def run_score(returns: np.ndarray) -> float:
    """Mean of the last 10% of a learning curve's points (at least the last point)."""
    tail = -(-len(returns) // TAIL)  # integer ceil: float ceil(0.1 * 30) is 4
    return float(np.mean(returns[-tail:]))


def _seed(config: dict[str, Any], run_dir: Path) -> int:
    seed = config["run"].get("seed")
    if seed is None:
        match = re.fullmatch(r"seed(\d+)", run_dir.name)
        seed = int(match.group(1)) if match else 0
    return int(seed)


def _environment(env_id: str) -> tuple[str, bool]:
    """(name, is an Atari game); an id gymnasium does not know keeps its own name instead of failing."""
    try:
        return env_name(env_id), env_kind(env_id) == "atari"
    except ValueError:
        return env_id.replace("/", "-"), False


def load_run_scores(paths: Sequence[str | Path], source: str = "eval") -> tuple[list[RunScore], list[str]]:
    """Every training run under ``paths`` with a learning curve, scored; and notes on the folders skipped."""
    if source not in ("train", "eval"):
        raise ConfigError(f"--source must be train or eval, got {source!r}")
    runs, notes, seen = [], [], set()
    configs: dict[Path, dict[str, Any]] = {}
    for run_dir in find_runs(list(paths)):
        # The same folder may be reached twice (a root and a run inside it): count it once.
        if run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        try:
            config = read_config(run_dir)
            env, atari = _environment(str(config["env"]["id"]))
            label = run_label(config["algo"], config["policy"], config["run"].get("label"))
            seed = _seed(config, run_dir)
        except (ConfigError, KeyError, TypeError, ValueError):
            notes.append(f"skipped {run_dir}: its config.yaml is not a training run's (no env.id, algo, run)")
            continue
        steps, returns = learning_curve(run_dir, source)
        if not len(steps):
            notes.append(f"skipped {run_dir}: no {source} results yet")
            continue
        runs.append(RunScore(run_dir, env, label, seed, atari, steps, returns, run_score(returns)))
        configs[run_dir] = config
    if not runs:
        raise ConfigError(f"the runs have no {source} learning curves yet")
    _check_one_experiment_per_label(runs, configs)
    runs.sort(key=lambda run: (run.env, run.label, run.seed, str(run.path)))
    return runs, notes


# What may differ between the seeds of one experiment: what a resume may change (budget, how a run is watched
# and saved), and each run's seed, folder, label and starting weights (a transfer stage starts each seed
# from its own source run).
SEED_KEYS = (*MUTABLE, "run.seed", "run.out", "run.label", "run.init_from")


def _check_one_experiment_per_label(runs: list[RunScore], configs: dict[Path, dict[str, Any]]) -> None:
    """The runs of one label on one environment are the seeds of one experiment: one line naming two runs
    otherwise (another setting, or the same seed twice), rather than a score pooled over both."""
    first: dict[tuple[str, str], RunScore] = {}
    seeds: dict[tuple[str, str, int], RunScore] = {}
    for run in runs:
        group = first.setdefault((run.env, run.label), run)
        difference = first_difference(configs[group.path], configs[run.path], SEED_KEYS)
        if difference is not None:
            key, a, b = difference
            raise ConfigError(
                f"{group.path} and {run.path} are both {run.label} on {run.env} but differ in {key} ({a!r} vs "
                f"{b!r}): report them apart, or tell them apart with run.label"
            )
        twin = seeds.setdefault((run.env, run.label, run.seed), run)
        if twin is not run:
            raise ConfigError(
                f"{twin.path} and {run.path} are both {run.label} on {run.env} with seed {run.seed}: "
                "one experiment's seeds must differ (report copies apart)"
            )


def relative_improvement(variant: float, baseline: float, env: str | None = None) -> float:
    """``(variant - baseline) / (max(variant, baseline) - random)`` on an Atari game with reference scores,
    else ``(variant - baseline) / |baseline|``; NaN where the denominator is 0. A fraction, not percent."""
    scale = 0.0
    if env in ATARI_REFERENCE_SCORES:
        scale = max(variant, baseline) - ATARI_REFERENCE_SCORES[env][0]
    if scale <= 0:  # not Atari, or both at or below random: the random score is no yardstick
        scale = abs(baseline)
    return (variant - baseline) / scale if scale > 0 else math.nan


def _choose_baseline(labels: list[str], baseline: str | None, notes: list[str]) -> str | None:
    if baseline is not None:
        if baseline not in labels:
            raise ConfigError(f"--baseline: unknown label {baseline!r}; the runs have {', '.join(labels)}")
        return baseline
    candidates = [label for label in labels if "lstm" in label.lower()]
    if not candidates:
        notes.append("no relative improvement: no label contains 'lstm'; name the baseline with --baseline")
        return None
    if len(candidates) > 1:
        notes.append(f"several labels contain 'lstm' ({', '.join(candidates)}): {candidates[0]} is the baseline")
    return candidates[0]


def aggregate_metrics(
    scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's IQM, median, mean and optimality gap (the order of ``METRICS``) of ``{label: runs x games}``
    normalised scores: ``(point estimates, 95% CIs as 2 x 4 arrays)`` from ``reps`` stratified bootstraps."""
    from rliable import metrics

    def compute(matrix: np.ndarray) -> np.ndarray:
        return np.array(
            [
                metrics.aggregate_iqm(matrix),
                metrics.aggregate_median(matrix),
                metrics.aggregate_mean(matrix),
                metrics.aggregate_optimality_gap(matrix),
            ]
        )

    return interval_estimates(scores, compute, reps, seed)


def _profiles(
    scores: dict[str, np.ndarray], taus: np.ndarray, reps: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    # rliable's create_performance_profile takes no random state; the same score-distribution profile through
    # get_interval_estimates is reproducible.
    def profile(matrix: np.ndarray) -> np.ndarray:
        return (matrix.reshape(1, -1) > taus[:, None]).mean(axis=1)

    return interval_estimates(scores, profile, reps, seed)


def _game_scores(runs: list[RunScore]) -> dict[tuple[str, str], GameScore]:
    grouped: dict[tuple[str, str], list[RunScore]] = defaultdict(list)
    for run in runs:
        grouped[run.env, run.label].append(run)
    games = {}
    for (env, label), group in sorted(grouped.items()):
        values = np.array([run.score for run in group])
        low, high = mean_ci(values)
        normalized = None
        if group[0].atari and env in ATARI_REFERENCE_SCORES:
            # Normalisation is increasing and affine, so it maps the mean and the CI bounds directly.
            normalized = tuple(human_normalized(env, value) for value in (values.mean(), low, high))
        games[env, label] = GameScore(
            env, label, [run.seed for run in group], float(values.mean()), low, high, normalized
        )
    return games


def _aggregate_matrices(runs: list[RunScore], notes: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """``({label: runs x games normalised scores}, games)`` for rliable, or ``({}, [])`` without such games."""
    by_game: dict[str, dict[str, list[RunScore]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.atari and run.env in ATARI_REFERENCE_SCORES:
            by_game[run.env][run.label].append(run)
    others = sorted({run.env for run in runs} - set(by_game))
    if others:
        notes.append(f"no human-normalised score (not an Atari game with reference scores): {', '.join(others)}")
    if not by_game:
        notes.append("no aggregates or performance profiles: no game has human and random reference scores")
        return {}, []
    labels = sorted({label for per_label in by_game.values() for label in per_label})
    games = sorted(game for game, per_label in by_game.items() if set(per_label) == set(labels))
    left_out = sorted(set(by_game) - set(games))
    if left_out:
        notes.append(f"left out of the aggregates (not every label has runs on them): {', '.join(left_out)}")
    if not games:
        notes.append("no aggregates or performance profiles: no game has runs of every label")
        return {}, []
    matrices = {}
    for label in labels:
        count = min(len(by_game[game][label]) for game in games)
        columns = []
        for game in games:
            kept = sorted(by_game[game][label], key=lambda run: run.seed)
            if len(kept) > count:
                dropped = ", ".join(str(run.seed) for run in kept[count:])
                notes.append(f"{label} on {game}: seeds {dropped} left out of the aggregates ({count} runs per game)")
            columns.append([human_normalized(game, run.score) for run in kept[:count]])
        matrices[label] = np.array(columns, dtype=np.float64).T
    return matrices, games


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # no "-0.000"


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:+.1f}%"


def _range(low: float | None, high: float | None, digits: int = 3) -> str:
    return "n/a" if low is None or high is None else f"{_number(low, digits)} to {_number(high, digits)}"


def _interval(point: float, low: float, high: float, digits: int = 3) -> str:
    return f"{_number(point, digits)} ({_range(low, high, digits)})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _plot_improvement(games: dict, baseline: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for game in games.values():
        if game.improvement is not None and math.isfinite(game.improvement):
            variants[game.label].append((game.env, 100 * game.improvement))
    if not variants:
        return False
    widest = max(len(bars) for bars in variants.values())
    figure, axes = plt.subplots(
        len(variants), 1, figsize=(max(6.0, 0.4 * widest + 2), 4 * len(variants)), squeeze=False
    )
    for axis, (label, bars) in zip(axes[:, 0], sorted(variants.items()), strict=True):
        bars.sort(key=lambda bar: -bar[1])  # best game first, as in the paper's Fig. 6
        values = [value for _, value in bars]
        axis.bar(range(len(bars)), values, color=["tab:green" if value >= 0 else "tab:red" for value in values])
        axis.set_xticks(range(len(bars)), [env for env, _ in bars], rotation=90 if len(bars) > 6 else 0)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_ylabel("relative improvement (%)")
        axis.set_title(f"{label} over {baseline}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def _plot_aggregates(points: dict, intervals: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    height = 0.6 * len(points)  # inches
    figure, _ = plot_utils.plot_interval_estimates(
        points,
        intervals,
        metric_names=list(METRICS),
        xlabel="human-normalised score",
        row_height=0.6,
        # rliable places the label in figure coordinates: keep it half an inch below the axes, under the ticks.
        xlabel_y_coordinate=-0.6 / height,
    )
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def _plot_profiles(profiles: dict, intervals: dict, taus: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    figure, axis = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        profiles,
        taus,
        performance_profile_cis=intervals,
        ax=axis,
        xlabel=r"human-normalised score $\tau$",
        ylabel=r"fraction of runs with score $> \tau$",
        legend=True,
        labelsize="large",
        ticklabelsize="large",
        legendsize="large",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _log_to_wandb(
    out: Path, files: dict[str, str], tables: dict[str, tuple[list[str], list[list]]], project: str, config: dict
) -> str | None:
    """Log the figures and tables to one wandb run; its local folder, or None (with a warning) on any failure."""
    try:
        import wandb

        from rims_rl.agents.tracking import wandb_mode

        run = wandb.init(
            project=project,
            group="report",
            job_type="report",
            name=f"report-{out.resolve().name}",
            config=config,
            dir=str(out),
            mode=wandb_mode(),
            # A caller's own open wandb run (a training loop's) stays open: this run is logged through its handle.
            reinit="create_new",
            settings=wandb.Settings(init_timeout=60, silent=True),
        )
        try:
            logged: dict[str, Any] = {name: wandb.Image(path) for name, path in files.items() if path.endswith(".png")}
            for name, (columns, rows) in tables.items():
                logged[name] = wandb.Table(columns=columns, data=rows)
            run.log(logged)
            folder = str(Path(run.dir).parent)
        finally:
            run.finish()
        return folder
    except Exception as error:  # tracking must never fail a report
        warnings.warn(f"wandb: the report was not logged: {error}", stacklevel=3)
        return None


def write_report(
    paths: Sequence[str | Path],
    out: str | Path = "report",
    source: str = "eval",
    baseline: str | None = None,
    track: bool = False,
    reps: int = 2000,
    seed: int = 0,
    wandb_project: str = "rims-rl",
) -> dict[str, Any]:
    """Write the multi-seed report of the runs under ``paths`` (run folders or folders holding them) to ``out``.

    ``source`` scores runs on their periodic evaluations ("eval") or training episodes ("train"); ``baseline``
    is the label improvements are measured against (default: the label containing "lstm"); ``reps`` stratified
    bootstrap resamples (seeded with ``seed``) go into the aggregates' and performance profiles' CIs.

    Returns the paths of the written files by name ("md", "csv", "curves", "curves_csv", and where there was
    something to show "improvement", "aggregates", "aggregates_csv", "profiles"), plus "notes" (list of str)
    and "wandb" (the local wandb run folder, or None).
    Raises ``ConfigError`` for no runs, an unknown baseline or bad settings.
    """
    if reps < 1:
        raise ConfigError(f"--reps must be at least 1, got {reps}")
    out = Path(out)
    runs, notes = load_run_scores(paths, source)
    labels = sorted({run.label for run in runs})
    baseline = _choose_baseline(labels, baseline, notes)
    check_writable(out)  # after the runs are read: a refusal leaves no output folder behind
    if baseline is not None and len(labels) == 1:
        notes.append(f"no relative improvement: {baseline} is the only label")
    games = _game_scores(runs)
    if baseline is not None:
        for (env, label), game in games.items():
            if label != baseline and (env, baseline) in games:
                game.improvement = relative_improvement(game.mean, games[env, baseline].mean, env)
                if not math.isfinite(game.improvement):
                    notes.append(f"{label} on {env}: relative improvement undefined (the baseline scores 0)")
        missing = sorted({env for env, _ in games} - {env for env, label in games if label == baseline})
        if missing and len(labels) > 1:
            notes.append(f"no relative improvement on {', '.join(missing)}: no {baseline} runs there")

    files: dict[str, str] = {}

    curve_groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        curve_groups[run.env][run.label].append((run.steps, run.returns))
    curve_rows = plot_curves(curve_groups, out / "curves.png", source)
    curve_columns = ["env", "run", "seeds", "step", "mean_return", "ci95_low", "ci95_high"]
    _write_csv(out / "curves.csv", curve_columns, curve_rows)
    files["curves"], files["curves_csv"] = str(out / "curves.png"), str(out / "curves.csv")

    if baseline is not None and _plot_improvement(games, baseline, out / "improvement.png"):
        files["improvement"] = str(out / "improvement.png")

    matrices, aggregate_games = _aggregate_matrices(runs, notes)
    points, intervals = aggregate_metrics(matrices, reps, seed) if matrices else ({}, {})
    aggregate_columns = ["label", "runs_per_game", "games", "metric", "value", "ci95_low", "ci95_high"]
    aggregate_rows = [
        [label, matrix.shape[0], len(aggregate_games), metric, points[label][i], *intervals[label][:, i]]
        for label, matrix in matrices.items()
        for i, metric in enumerate(METRICS)
    ]
    if matrices:
        _write_csv(out / "aggregates.csv", aggregate_columns, aggregate_rows)
        _plot_aggregates(points, intervals, out / "aggregates.png")
        everything = np.concatenate([matrix.ravel() for matrix in matrices.values()])
        taus = np.linspace(min(0.0, everything.min()), max(1.0, everything.max()), PROFILE_POINTS)
        profiles, profile_intervals = _profiles(matrices, taus, reps, seed)
        _plot_profiles(profiles, profile_intervals, taus, out / "profiles.png")
        files["aggregates"], files["aggregates_csv"] = str(out / "aggregates.png"), str(out / "aggregates.csv")
        files["profiles"] = str(out / "profiles.png")

    game_columns = [
        "env",
        "label",
        "seeds",
        "seed_list",
        "mean_score",
        "ci95_low",
        "ci95_high",
        "normalized_mean",
        "normalized_ci95_low",
        "normalized_ci95_high",
        "baseline",
        "relative_improvement",
    ]
    game_rows = [
        [
            game.env,
            game.label,
            len(game.seeds),
            " ".join(map(str, game.seeds)),
            game.mean,
            game.low,
            game.high,
            *(game.normalized or (None, None, None)),
            baseline if game.improvement is not None else None,
            game.improvement,
        ]
        for game in games.values()
    ]
    _write_csv(out / "report.csv", game_columns, game_rows)
    files["csv"] = str(out / "report.csv")

    markdown = _markdown(runs, games, labels, baseline, source, matrices, aggregate_games, points, intervals)
    markdown += _figures_and_notes(files, notes)
    (out / "report.md").write_text(markdown)
    files["md"] = str(out / "report.md")

    wandb_dir = None
    if track:
        tables = {"per_game": (game_columns, game_rows), "curves_table": (curve_columns, curve_rows)}
        if matrices:
            tables["aggregates_table"] = (aggregate_columns, aggregate_rows)
        settings = {"source": source, "baseline": baseline, "reps": reps, "runs": [str(run.path) for run in runs]}
        wandb_dir = _log_to_wandb(out, dict(files), tables, wandb_project, settings)
    return {**files, "notes": notes, "wandb": wandb_dir}


def _write_csv(path: Path, columns: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(["" if value is None else value for value in row] for row in rows)


def _markdown(
    runs: list[RunScore],
    games: dict[tuple[str, str], GameScore],
    labels: list[str],
    baseline: str | None,
    source: str,
    matrices: dict[str, np.ndarray],
    aggregate_games: list[str],
    points: dict[str, np.ndarray],
    intervals: dict[str, np.ndarray],
) -> str:
    envs = sorted({run.env for run in runs})
    what = "periodic evaluations (evaluations.npz)" if source == "eval" else "training episodes (progress.csv)"
    lines = [
        "# Report",
        "",
        f"{len(runs)} runs on {len(envs)} game{'s' if len(envs) != 1 else ''}; labels: {', '.join(labels)}.",
        f"Run score: the mean of the last 10% of the {what}. Per game: mean over seeds, 95% bootstrap CI.",
        "Human-normalised: (score - random) / (human - random).",
    ]
    if baseline is not None:
        lines.append(
            f"Relative improvement over {baseline}: (variant - baseline) / (max(variant, baseline) - random) on "
            "Atari games with reference scores, else (variant - baseline) / |baseline|."
        )
    against = f"vs {baseline}" if baseline is not None else "relative improvement"
    lines += [
        "",
        "## Per game",
        "",
        f"| game | label | seeds | mean score | 95% CI | human-normalised | 95% CI | {_cell(against)} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for game in games.values():
        normalized = game.normalized or (None, None, None)
        improvement = "baseline" if game.label == baseline else _percent(game.improvement)
        lines.append(
            f"| {_cell(game.env)} | {_cell(game.label)} | {len(game.seeds)} ({', '.join(map(str, game.seeds))}) "
            f"| {_number(game.mean)} | {_range(game.low, game.high, 2)} | {_number(normalized[0], 3)} "
            f"| {_range(normalized[1], normalized[2])} | {improvement} |"
        )
    if matrices:
        lines += [
            "",
            f"## Aggregates over {len(aggregate_games)} game{'s' if len(aggregate_games) != 1 else ''} "
            "(human-normalised, rliable)",
            "",
            f"Games: {', '.join(aggregate_games)}. Point estimate (95% stratified-bootstrap CI).",
            "",
            "| label | runs per game | " + " | ".join(METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        for label, matrix in matrices.items():
            cells = [_interval(points[label][i], *intervals[label][:, i]) for i in range(len(METRICS))]
            lines.append(f"| {_cell(label)} | {matrix.shape[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figures_and_notes(files: dict[str, str], notes: list[str]) -> str:
    captions = {
        "curves": "Learning curves: mean and 95% CI across seeds",
        "improvement": "Relative improvement over the baseline per game",
        "aggregates": "Aggregate human-normalised scores with 95% CIs",
        "profiles": "Performance profiles (score distributions) with 95% CIs",
    }
    lines = ["", "## Figures", ""]
    lines += [f"![{caption}]({Path(files[name]).name})" for name, caption in captions.items() if name in files]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
