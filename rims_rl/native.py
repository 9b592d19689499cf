"""The compiled RIMs time loop (``csrc/rims_loop.cpp``): built once, the Python loop where it cannot be.

The fused loop of :mod:`rims_rl.loop` runs about thirty small ops per step in each direction; on a
CPU at recurrent PPO's minibatch shapes their dispatch, not arithmetic, is much of the cost. The C++
version runs each step as plain loops and its own small matmul kernel (AVX2 where the CPU has it), the
units split across threads.

``make install`` builds it (torch's C++ extension loader: a C++ compiler and ninja, under a minute);
otherwise the first RIMs call on a CPU does. The build lives in ``RIMS_RL_BUILD_DIR`` (default
``~/.cache/rims_rl``), one folder per source, torch and Python version, so later processes only import
it. Where it cannot be built, a warning says why, once, and the Python loop runs instead: same results,
slower. ``RIMS_RL_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

_SOURCE = Path(__file__).parent / "csrc" / "rims_loop.cpp"
# OpenMP for the per-unit threads (ATen's parallel_for); contraction gives the AVX2 clone its FMAs.
_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast"]
_module: ModuleType | None = None
_tried = False


def enabled() -> bool:
    """Whether ``RIMS_RL_NATIVE`` allows the compiled loop (anything but 0, false, no or off)."""
    return os.environ.get("RIMS_RL_NATIVE", "1").strip().lower() not in {"0", "false", "no", "off"}


def build_name() -> str:
    """The extension's name: a new source, torch, Python or machine gets a build of its own."""
    digest = hashlib.sha256(_SOURCE.read_bytes())
    for part in (torch.__version__, sys.implementation.cache_tag, platform.machine(), *_FLAGS):
        digest.update(part.encode())
    return f"rims_rl_loop_{digest.hexdigest()[:12]}"


def build_dir() -> Path:
    return Path(os.environ.get("RIMS_RL_BUILD_DIR") or Path.home() / ".cache" / "rims_rl") / build_name()


def _import(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def loop() -> ModuleType | None:
    """The compiled loop module, built on the first call if needed; None where it is off or cannot be built."""
    global _module, _tried
    if not enabled():
        return None
    if _tried:
        return _module
    _tried = True
    name, folder = build_name(), build_dir()
    try:
        library = folder / f"{name}.so"
        if library.is_file():
            _module = _import(name, library)
        else:
            from torch.utils import cpp_extension

            print("rims-rl: compiling the RIMs time loop (once, under a minute)...", file=sys.stderr, flush=True)
            folder.mkdir(parents=True, exist_ok=True)
            _module = cpp_extension.load(
                name=name,
                sources=[str(_SOURCE)],
                extra_cflags=_FLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(folder),
                verbose=False,
            )
    except Exception as error:  # no compiler or headers, a read-only cache: the Python loop still works
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        warnings.warn(
            f"rims-rl: the compiled RIMs loop is unavailable ({first_line}); using the Python loop, same results, "
            "slower on CPU. RIMS_RL_NATIVE=0 skips this attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module


def build() -> bool:
    """Build (or find) the compiled loop now and say where; ``make install`` calls this."""
    ready = loop() is not None
    print(f"rims-rl: compiled RIMs loop {'ready' if ready else 'unavailable'} ({build_dir()})")
    return ready
