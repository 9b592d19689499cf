"""rims-rl: Recurrent Independent Mechanisms as a drop-in recurrent core for reinforcement learning.

``from rims_rl import RIMs`` loads the core (torch) on first use, so that the light parts of the package
(reading run folders, plotting, registering environments) never import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["RIMs", "RIMsDetails", "__version__"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from rims_rl.rims import RIMs, RIMsDetails


def __getattr__(name: str):
    if name in ("RIMs", "RIMsDetails"):
        from rims_rl import rims

        return getattr(rims, name)
    raise AttributeError(f"module 'rims_rl' has no attribute {name!r}")
