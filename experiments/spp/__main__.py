"""``python -m experiments.spp``: see ``experiments.spp.cli``."""

import sys

from experiments.spp.cli import main

sys.exit(main())
