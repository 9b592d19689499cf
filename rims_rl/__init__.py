"""rims-rl: Recurrent Independent Mechanisms as a drop-in recurrent core for reinforcement learning."""

from rims_rl.rims import RIMs, RIMsDetails

__all__ = ["RIMs", "RIMsDetails", "__version__"]
__version__ = "0.1.0"
