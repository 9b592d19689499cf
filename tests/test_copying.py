"""The copying experiment, its config handling and the command line, at seconds-long sizes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from rims_rl.agents.checkpointing import load_checkpoint
from rims_rl.agents.config import ConfigError, CoreConfig, parse_set
from rims_rl.agents.copying import copying_batch, load_copying_config, run_copying
from tests.helpers import assert_one_line_error, cli, cli_here

TINY = [
    "task.digits=2",
    "task.train_span=3",
    "task.eval_spans=[3, 12]",
    "train.batch_size=16",
    "train.eval_every=10",
    "train.eval_sequences=32",
    "train.lr=0.003",
    "models.rims.unit_size=8",
    "models.rims.num_units=4",
    "models.rims.k_active=2",
    "models.rims.input_heads=2",
    "models.rims.input_key_size=8",
    "models.lstm.hidden_size=16",
]


def tiny_config(out, *extra: str):
    items = [*TINY, f"run.out={out}", "run.progress=false", *extra]
    return load_copying_config("copying.yaml", [parse_set(item) for item in items])


def test_batch_layout():
    inputs, targets = copying_batch(5, digits=3, span=4, generator=torch.Generator().manual_seed(0))
    assert inputs.shape == (2 * 3 + 4 + 1, 5) and targets.shape == (3, 5)
    assert torch.equal(inputs[:3], targets)
    assert (inputs[3:7] == 0).all() and (inputs[7] == 9).all() and (inputs[8:] == 0).all()
    assert targets.max() <= 8


def test_packaged_config_is_complete_and_overrides_are_checked():
    config = load_copying_config()
    assert config.models["rims"] == CoreConfig("rims", {"unit_size": 100, "num_units": 6, "k_active": 4})
    assert config.models["lstm"] == CoreConfig("lstm", {"hidden_size": 600, "forget_bias": 5.0})
    assert config.task.eval_spans == [50, 200]
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.updatez'.*did you mean updates"):
        load_copying_config("copying.yaml", [("train.updatez", 3)])
    with pytest.raises(ConfigError, match="key=value"):
        parse_set("train.updates")
    assert load_copying_config("copying.yaml", [parse_set("train.lr=1e-4")]).train.lr == 1e-4


def test_run_writes_results_and_resume_continues_exactly(tmp_path):
    straight = run_copying(tiny_config(tmp_path / "straight", "train.updates=20"))
    assert [row["model"] for row in straight] == ["rims", "lstm"]
    for row in straight:
        assert row["updates"] == 20 and len(row["history"]) == 2
        assert all(math.isfinite(ce) for ce in row["eval_ce"].values())
    table = (tmp_path / "straight" / "results.md").read_text()
    assert "CE at 3" in table and "CE at 12" in table and "| rims |" in table
    assert json.loads((tmp_path / "straight" / "results.json").read_text())[0]["updates"] == 20

    # Stop after 10 updates, then resume to 20: the same numbers as the run that never stopped.
    run_copying(tiny_config(tmp_path / "resumed", "train.updates=10"))
    resumed = run_copying(tiny_config(tmp_path / "resumed", "train.updates=20"), resume=True)
    for a, b in zip(straight, resumed, strict=True):
        assert [h["update"] for h in b["history"]] == [10, 20]
        assert a["eval_ce"] == b["eval_ce"]
    for name in ("rims", "lstm"):
        left = load_checkpoint(tmp_path / "straight" / "checkpoints" / f"{name}.pt", "copying")["model"]
        right = load_checkpoint(tmp_path / "resumed" / "checkpoints" / f"{name}.pt", "copying")["model"]
        assert all(torch.equal(left[key], right[key]) for key in left)


def test_rims_learns_a_short_copy(tmp_path):
    """Seconds-long smoke test of learning: RIMs gets well below chance on a 2-digit copy."""
    config = tiny_config(
        tmp_path,
        "train.updates=200", "train.eval_every=10", "train.batch_size=32", "train.lr=0.005",
        "task.eval_spans=[3]", "models.rims.unit_size=32", "models.rims.input_dropout=0.0",
        "models.rims.comm_dropout=0.0",
    )  # fmt: skip
    config.models = {"rims": config.models["rims"]}
    (row,) = run_copying(config)
    curve = [entry["eval_ce"][3] for entry in row["history"]]
    assert curve[0] > 0.8 * math.log(9)  # near chance (ln 9) after 10 updates...
    assert curve[-1] < 0.5 * math.log(9)  # ...and learned (about 0.3 ln 9 here)


def test_bad_model_settings_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.rims: k_active"):
        tiny_config(tmp_path, "models.rims.k_active=9")
    with pytest.raises(ConfigError, match=r"models\.rims\.bogus"):
        tiny_config(tmp_path, "models.rims.bogus=1")
    assert not list(tmp_path.iterdir())


def test_cli_runs_the_copying_task(tmp_path):
    overrides = [item for pair in (("--set", o) for o in [*TINY, "train.updates=10"]) for item in pair]
    result = cli("copying", "--out", str(tmp_path), "--models", "lstm", "--no-progress", *overrides)
    assert result.returncode == 0, result.stderr
    assert "| lstm |" in result.stdout
    assert (tmp_path / "results.md").is_file() and (tmp_path / "checkpoints" / "lstm.pt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
        (["--set", "models.rims.k_active=7"], "models.rims: k_active must be an integer in [1, num_units=6]"),
        (["--set", "run.device=cuda"], "no CUDA GPU"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--set", "train.updates=0"], "train.updates must be in [1, "),
        (["--set", "train.updates=-1"], "train.updates must be in [1, "),
        (["--config", "missing.yaml"], "config not found"),
        (["--models", "gpt"], "run.models: unknown gpt"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, args, message):
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = cli_here("copying", "--out", str(tmp_path), *args)
    assert_one_line_error(result, message)
    assert not list(tmp_path.rglob("*.pt"))


def test_cli_help_documents_every_option():
    result = cli_here("copying", "--help")
    assert result.returncode == 0
    for option in ("--config", "--set", "--models", "--out", "--resume", "--no-progress"):
        assert option in result.stdout


def test_a_copying_grid_runs_through_the_sweep_reuses_finished_runs_and_reports_once(tmp_path):
    """Tables 1 and 5 are sweeps of copying runs: one folder per variant, one table and plot over the grid."""
    overrides = dict(parse_set(item) for item in [*TINY, "train.updates=20"])
    del overrides["models.rims.k_active"]  # each variant sets its own
    spec = {
        "command": "copying",
        "config": "copying.yaml",
        "out": str(tmp_path / "grid"),
        "grid": {"run.seed": [0]},
        "variants": {
            "rims-k1": {"run.models": ["rims"], "models.rims.k_active": 1},
            "lstm": {"run.models": ["lstm"]},
        },
        "overrides": {**overrides, "run.progress": False},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("sweep", "--config", str(path), "--workers", "2", timeout=600)
    assert result.returncode == 0, result.stderr
    grid = tmp_path / "grid"
    table = (grid / "results.md").read_text()
    assert "| rims-k1 (seed0) |" in table and "| lstm (seed0) |" in table and "all steps" in table
    assert (grid / "curves.png").stat().st_size > 1000
    assert (grid / "rims-k1" / "seed0" / "rims-activations.png").is_file()
    saved = load_checkpoint(grid / "rims-k1" / "seed0" / "checkpoints" / "rims.pt", "copying")
    assert saved["spec"]["k_active"] == 1 and saved["state"]["update"] == 20
    again = cli("sweep", "--config", str(path), timeout=600)
    assert again.returncode == 0 and "2 runs: 2 done" in again.stdout


def _gradient_probe():
    """``benchmarks/copying_gradients.py``, whose figures docs/results.md quotes (benchmarks is no package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "copying_gradients.py"
    spec = importlib.util.spec_from_file_location("copying_gradients", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradient_probe_reads_the_lstm_forget_gates_it_reports():
    from rims_rl.cores import LSTMCore

    probe = _gradient_probe()
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5)
    lstm = LSTMCore(5, 7, forget_bias=2.0)
    output, _ = lstm(x)
    # The gates an nn.LSTMCell computes stepping the same weights.
    cell = torch.nn.LSTMCell(5, 7)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in lstm.state_dict().items()})
    h = c = torch.zeros(3, 7)
    expected = []
    for t in range(6):
        gates = x[t] @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
        expected.append(torch.sigmoid(gates[:, 7:14]))  # gates are i, f, g, o
        h, c = cell(x[t], (h, c))
    torch.testing.assert_close(probe.lstm_forget_gates(lstm, x, output), torch.stack(expected).detach())


def test_rims_forget_bias_is_a_model_setting(tmp_path):
    from rims_rl.agents.copying import build_model

    config = tiny_config(tmp_path, "models.rims.forget_bias=5")
    model = build_model(config.models["rims"], config.task.digits)
    assert torch.all(model.core.bias_ih[:, 8:16] == 5.0)  # unit_size 8: the forget slice
    with pytest.raises(ConfigError, match="forget_bias needs LSTM cells"):
        tiny_config(tmp_path, "models.rims.forget_bias=5", "models.rims.cell=gru")


def test_the_all_steps_scale_is_the_recall_ce_spread_over_every_step_and_the_table_shows_both():
    """Digits 10, span 50: T = 10 + 50 + 1 + 10 = 71 steps, so the authors' scale is the recall CE x 10 / 71."""
    from rims_rl.agents.copying import all_steps_ce, format_table

    assert all_steps_ce(2.0, 10, 50) == pytest.approx(2.0 * 10 / 71)
    assert all_steps_ce(1.0, 10, 200) == pytest.approx(10 / 221)
    row = {"model": "m", "parameters": 5, "eval_ce": {"50": 0.71, "200": 2.21}, "digits": 10, "updates": 3}
    table = format_table([{**row, "train_seconds": 60.0}], [50, 200])
    cells = table.splitlines()[2].split(" | ")
    assert cells[2:6] == ["0.710", "2.210", "0.1000", "0.1000"]  # recall CE at each span, then the authors' scale
