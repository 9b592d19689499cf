"""The package's layers: every module imports alone, imports point down, and reading runs loads no policy code.

Layers, lowest first: the RIMs core (pure torch) <- policies and environments <- agents (runners) <- the
command line. A module may import its own layer and the layers below it, never above.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import rims_rl

ROOT = Path(__file__).resolve().parent.parent
# Where each installed package's sources live in the repository (pyproject's package-dir).
SOURCES = {"rims_rl": ROOT / "rims_rl", "rims_rl.agents": ROOT / "agents", "rims_rl.envs": ROOT / "envs"}
CORE = {"rims_rl", "rims_rl.rims", "rims_rl.step", "rims_rl.loop", "rims_rl.native", "rims_rl.cores", "rims_rl.utils"}
POLICIES = {"rims_rl.policies", "rims_rl.extractors"}
TOP = {"rims_rl.agents.cli", "rims_rl.__main__"}


def layer(module: str) -> int:
    if module in TOP:
        return 3
    if module.startswith("rims_rl.agents"):
        return 2
    if module in POLICIES or module.startswith("rims_rl.envs"):
        return 1
    assert module in CORE, f"{module}: which layer? (add it to tests/test_layers.py)"
    return 0


def modules() -> dict[str, Path]:
    """Every module of ours and its file."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def our_imports(path: Path) -> set[str]:
    """The rims_rl modules a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("rims_rl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rims_rl"):
            # "from rims_rl import loop" imports a module; "from rims_rl.step import X" the module rims_rl.step
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                names.add(candidate if candidate in modules() else node.module)
    return names


def test_the_layout_covers_every_module():
    found = set(modules())
    walked = {info.name for info in pkgutil.walk_packages(rims_rl.__path__, "rims_rl.")}
    assert walked - {"rims_rl.configs"} <= found
    for name in found:
        layer(name)


def test_imports_only_point_down():
    upward = [
        f"{name} (layer {layer(name)}) imports {imported} (layer {layer(imported)})"
        for name, path in modules().items()
        for imported in our_imports(path)
        if layer(imported) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_every_module_imports_alone_without_cycles():
    """Each module imported first in a fresh set of our modules (third-party ones stay loaded, for speed):
    an import cycle among ours fails here whichever module it is entered by."""
    names = sorted(set(modules()) - {"rims_rl.__main__"})
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'rims_rl' or m.startswith('rims_rl.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed.append(f'{name}: {type(error).__name__}: {error}')\n"
        "print('\\n'.join(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == ""


def test_reading_and_plotting_runs_loads_neither_torch_nor_sb3():
    """compare and report read run folders, score and plot them; none of that needs the policies."""
    script = (
        "import sys\n"
        "import rims_rl.agents.compare, rims_rl.agents.report, rims_rl.agents.runs, rims_rl.agents.stats\n"
        "import rims_rl.envs\n"
        "print(sorted(m for m in ('torch', 'stable_baselines3', 'sb3_contrib') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
