"""RIMs core speed against the fused ``nn.LSTM``, measured side by side in one run.

Each shape times RIMs (6 units x 100, k_active 4, dropout off as in the RL configs) and
``nn.LSTM(600)`` on the same input, alternating the two so that machine noise hits both alike, and
prints the median times and their ratio. The last column is RIMs again with the compiled CPU time loop
off (``RIMS_RL_NATIVE=0``, the Python fused loop of ``rims_rl/loop.py``): what the compiled loop gives.
The input-set shapes give RIMs 49 rows (the Nature CNN's 7x7 map, 64 channels and 2 coordinates) and the
LSTM the same rows flattened, as the policies do.

    python benchmarks/bench_core.py [--repeats N] [--device cpu|cuda] [--output docs/bench.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from rims_rl import RIMs
from rims_rl.utils import resolve_device

# (name, T, B, input width, with backward, RIMs dropout, rows of an input set or None)
SHAPES = [
    ("training (T=128, B=2, in 512)", 128, 2, 512, True, 0.0, None),
    ("training, input set (T=128, B=2, 49 rows of 66)", 128, 2, 66, True, 0.0, 49),
    ("training (T=128, B=4, in 512)", 128, 4, 512, True, 0.0, None),
    ("acting (T=1, B=8, in 512)", 1, 8, 512, True, 0.0, None),
    ("acting, no grad (T=1, B=8, in 512)", 1, 8, 512, False, 0.0, None),
    ("acting, no grad, input set (T=1, B=8, 49 rows of 66)", 1, 8, 66, False, 0.0, 49),
    ("copying task (T=71, B=64, in 10)", 71, 64, 10, True, 0.0, None),
    # The copying experiment's own setting: the paper's dropout, live in training (autograd loop).
    ("copying task, dropout 0.1 (T=71, B=64, in 10)", 71, 64, 10, True, 0.1, None),
]


def _timer(
    model: nn.Module, x: torch.Tensor, backward: bool, device: torch.device, native: bool = True
) -> Callable[[], float]:
    if isinstance(model, nn.LSTM) and x.dim() == 4:  # an input set, flattened for the LSTM
        x = x.flatten(2)

    def once() -> float:
        os.environ["RIMS_RL_NATIVE"] = "1" if native else "0"
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        if backward:
            output, _ = model(x)
            output.sum().backward()
        else:
            with torch.no_grad():
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return once


def measure(
    steps: int,
    batch: int,
    width: int,
    backward: bool,
    dropout: float,
    repeats: int,
    device: torch.device,
    rows: int | None = None,
) -> dict:
    torch.manual_seed(0)
    x = torch.randn(steps, batch, *(() if rows is None else (rows,)), width, device=device)
    drop = {"input_dropout": dropout, "comm_dropout": dropout}
    models = {
        "lstm": nn.LSTM(width * (rows or 1), 600).to(device),
        # Dropout off, as in the RL configs, takes the fused time loop of rims_rl/loop.py; live dropout
        # (modules train by default) the per-step autograd loop.
        "rims": RIMs(width, 100, 6, 4, **drop).to(device),
        "rims_no_comm": RIMs(width, 100, 6, 4, **drop, communication=False).to(device),
    }
    timers = {name: _timer(model, x, backward, device) for name, model in models.items()}
    timers["rims_python_loop"] = _timer(models["rims"], x, backward, device, native=False)
    for timer in timers.values():  # warm-up
        timer()
        timer()
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            samples[name].append(timer())
    os.environ["RIMS_RL_NATIVE"] = "1"
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per model and shape")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--output", help="also write the Markdown table to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    lines = [
        f"torch {torch.__version__}, device {device} ({machine}); median of {args.repeats} alternating calls.",
        "",
        "| shape | nn.LSTM(600) | RIMs 6x100 k4 | ratio | RIMs, no comm. | ratio | RIMs, Python loop | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name, steps, batch, width, backward, dropout, rows in SHAPES:
        times = measure(steps, batch, width, backward, dropout, args.repeats, device, rows)
        lstm, rims, no_comm = times["lstm"], times["rims"], times["rims_no_comm"]
        python_loop = times["rims_python_loop"]
        kind = "fwd+bwd" if backward else "fwd"
        lines.append(
            f"| {name}, {kind} | {lstm * 1e3:.2f} ms | {rims * 1e3:.2f} ms | {rims / lstm:.2f}x "
            f"| {no_comm * 1e3:.2f} ms | {no_comm / lstm:.2f}x "
            f"| {python_loop * 1e3:.2f} ms | {python_loop / lstm:.2f}x |"
        )
        print(lines[-1], flush=True)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
