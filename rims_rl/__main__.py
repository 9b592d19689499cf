"""``python -m rims_rl`` runs the ``rims-rl`` command line."""

import sys

from rims_rl.cli import main

sys.exit(main())
