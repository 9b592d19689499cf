"""Settings for the whole test session."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker, and for the processes its tests start (they inherit the variable): with a
    # worker per core, torch's default of a thread per core would put N x N threads on N cores, which
    # wait on each other (measured: the suite took longer in CPU time than run serially).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
