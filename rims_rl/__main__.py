"""``python -m rims_rl`` runs the ``rims-rl`` command line (:mod:`rims_rl.agents.cli`)."""

import sys

if __name__ == "__main__":
    from rims_rl.agents.cli import main

    sys.exit(main())
