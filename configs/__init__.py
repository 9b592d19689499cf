"""YAML configs: the single source of run defaults. Installed as ``rims_rl.configs``."""
