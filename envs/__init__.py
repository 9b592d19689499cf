"""Environment builders and wrappers (gymnasium only). Installed as ``rims_rl.envs``."""
