"""Trainers, experiments and runners built on the RIMs core. Installed as ``rims_rl.agents``."""
